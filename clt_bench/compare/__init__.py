"""Transcoder features vs the baseline circuit (the compare stage, ``stage``): overlap and
influence share, units needed by every unit kind (``units``), generalisation across prompt
families and, on a planted model, the grading against the planted circuit."""
