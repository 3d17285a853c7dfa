"""Stability of a run's findings across CLT seeds (``clt-bench run --clt-seeds 0,1,2``): the
stage (``seeds``), feature matching by decoder direction (``match``) and ``<run>/stability/``
(``summary``)."""
