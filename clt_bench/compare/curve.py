"""The replacement model's probability difference (every MLP replaced by the transcoder, no
error nodes) beside the model's, on the task prompts. The units-needed curves live in
``clt_bench.compare.units``.
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.clt.replacement_hooks import replacement_hooks
from clt_bench.features.ablation import end_logits_via, pd_of
from clt_bench.task.dataset import TaskBatch


@torch.no_grad()
def replacement_pd(
    bridge: TransformerBridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    keep_first: bool = False,
    per_prompt: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """PD of the model and of its replacement model (every MLP -> CLT, no errors) on ``batch``.

    ``keep_first``: position 0 keeps the model's MLP outputs (a transcoder trained with
    ``activations.exclude_bos`` never saw it; ``clt.replacement_hooks.replacement_hooks``).
    ``per_prompt``: filled with the per-prompt PDs (``model_prob_diff``,
    ``replacement_prob_diff``) whose means are returned.
    """
    dev = next(bridge.parameters()).device
    tokens = batch.clean.to(dev)
    model = end_logits_via(bridge, lambda: bridge(tokens))
    repl = end_logits_via(
        bridge,
        lambda: bridge.run_with_hooks(
            tokens, fwd_hooks=replacement_hooks(clt, keep_first=keep_first)
        ),
    )
    per_m, per_r = pd_of(model, batch), pd_of(repl, batch)
    if per_prompt is not None:
        per_prompt.update(model_prob_diff=per_m.cpu(), replacement_prob_diff=per_r.cpu())
    pd_m = float(per_m.mean())
    pd_r = float(per_r.mean())
    agree = float((model.argmax(-1) == repl.argmax(-1)).double().mean())
    return {
        "model_prob_diff": pd_m,
        "replacement_prob_diff": pd_r,
        # a ratio to a PD that is not positive is undefined (docs/methods.md)
        "replacement_pd_ratio": pd_r / pd_m if pd_m > 0 else float("nan"),
        "replacement_top1_agreement_end": agree,
    }
