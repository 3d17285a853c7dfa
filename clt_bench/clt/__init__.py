"""Cross-layer transcoders (CLT) and per-layer transcoders (PLT): the module (``model``), its
training (``train``, ``losses``), circuit-tracer's file format (``circuit_tracer_io``), the
replacement model (``replacement_hooks``) and the clt stage (``stage``). Nothing is imported
eagerly."""
