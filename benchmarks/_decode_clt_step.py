"""Time decode-clt 0.0.1's training step (its own model, LossManager and AdamW), the way its
Trainer runs one: encode once, ``compute_total_loss`` with the precomputed activations, backward,
clip, AdamW. Run with decode-clt's own interpreter; prints one JSON line.

    <venv>/bin/python benchmarks/_decode_clt_step.py L d F tokens threads steps
"""

import json
import sys
import time

import torch
from clt.config import CLTConfig, TrainingConfig
from clt.models.clt import CrossLayerTranscoder
from clt.training.losses import LossManager


def main() -> None:
    L, d, F, n, threads, steps = (int(a) for a in sys.argv[1:7])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = CLTConfig(
        num_features=F, num_layers=L, d_model=d, activation_fn="jumprelu", jumprelu_threshold=0.03
    )
    model = CrossLayerTranscoder(cfg, process_group=None, device=torch.device("cpu"))
    tcfg = TrainingConfig(
        learning_rate=1e-4,
        training_steps=1000,
        sparsity_lambda=1e-3,
        sparsity_c=4.0,
        preactivation_coef=3e-6,
        gradient_clip_val=1.0,
        normalization_method="none",
        activation_path="unused",
    )
    lm = LossManager(tcfg, clt_config=cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, L, d, generator=g)
    y = torch.randn(n, L, d, generator=g)
    inputs = {l: x[:, l].contiguous() for l in range(L)}
    targets = {l: y[:, l].contiguous() for l in range(L)}
    times = []
    for step in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        acts = model.get_feature_activations(inputs)
        loss, _ = lm.compute_total_loss(
            model, inputs, targets, step, 1000, precomputed_activations=acts
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.decoder_module._cached_decoder_norms = None  # as its Trainer does after each step
        if step >= 2:
            times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "step_seconds": sorted(times)[len(times) // 2],
                "times": times,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
