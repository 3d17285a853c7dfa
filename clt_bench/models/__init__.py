"""Model sources: each name resolves to a TransformerLens ``TransformerBridge`` and its tokenizer.

- ``toy``          the embedded GPT-2-architecture model trained by the project (offline)
- ``gpt2``         GPT-2 small from the Hugging Face hub or the local cache
- ``gpt2-random``  GPT-2 small's architecture at full size, seeded random weights, real tokenizer
- ``hf:<name>``    any causal LM TransformerLens supports (hub name or local path)

LayerNorm is never folded and weights are never centred: CLTs read the raw ``hook_resid_mid``.
"""

from __future__ import annotations

from clt_bench.models.sources import LoadedModel, check_device, load_model, model_fingerprint

__all__ = ["LoadedModel", "check_device", "load_model", "model_fingerprint"]
