"""Cross-layer transcoders (CLT) and per-layer transcoders (PLT): model, training, I/O."""
