"""Per-layer transcoders (PLTs) beside the CLT, on the same activations (the ``plt`` stage)."""
