"""Cross-layer transcoders (CLT) and per-layer transcoders (PLT): model, training, I/O.

Public entry points (import them from their modules; this package imports nothing eagerly):
- ``clt_bench.clt.model.CrossLayerTranscoder`` / ``CLTSpec`` -- the module (PLT and skip are config)
- ``clt_bench.clt.circuit_tracer_io.load_clt(path)`` / ``save_clt(clt, path)`` -- circuit-tracer
  format
- ``clt_bench.clt.replacement_hooks.replacement_hooks(clt)`` -- every MLP replaced by the CLT
- ``clt_bench.clt.stage.run_clt_stage(cfg, loaded, out_dir)`` -- train + score, writes <out>/clt/
- ``clt_bench.activations.stage.run_activations_stage(cfg, loaded, out_dir)`` -- the data
"""
