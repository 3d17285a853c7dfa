"""Activations stage: corpus -> token rows -> (hook_resid_mid, hook_mlp_out) for every layer.

Either cached to disk in safetensors shards and read back shuffled, or computed on the fly into
shuffled blocks (a block-wise shuffle buffer). Both give the same batch for the same data position,
which is what exact resume relies on.
"""
