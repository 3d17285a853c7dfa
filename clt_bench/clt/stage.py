"""The clt stage: <out>/activations/ -> train (or load) -> <out>/clt/ in circuit-tracer format +
metrics.json + training curves. Under torchrun every rank trains; rank 0 writes and evaluates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from clt_bench.activations.stage import load_heldout, training_source
from clt_bench.artifacts import load_manifest
from clt_bench.clt import distributed as D
from clt_bench.clt.circuit_tracer_io import check_fits, load_clt, save_clt
from clt_bench.clt.quality import PER_PROMPT, evaluate_clt
from clt_bench.clt.train import plot_curves, train_clt
from clt_bench.config import RunConfig
from clt_bench.io import run_metadata, save_tensors, write_json
from clt_bench.models import LoadedModel

log = logging.getLogger(__name__)


def run_clt_stage(cfg: RunConfig, loaded: LoadedModel, out_dir: str | Path) -> dict[str, Any]:
    """Train (or load ``clt.load``) a CLT on ``<out>/activations/`` (the activations stage's
    outputs); write ``<out>/clt/`` and return its metrics. A killed training resumes from its
    last checkpoint in ``<out>/clt/`` (the runner keeps the folder of an interrupted attempt)."""
    stage = Path(out_dir) / "clt"
    metrics_path = stage / "metrics.json"
    device = cfg.model.device
    info = D.setup(device)
    device = D.local_device(device, info)
    manifest = load_manifest(out_dir)
    if cfg.clt.load:
        clt = load_clt(cfg.clt.load, device)
        check_fits(clt, loaded.n_layers, loaded.d_model, cfg.clt.load)
        train: dict[str, Any] = {
            "train_tokens": 0,
            "train_seconds": 0.0,
            "steps": 0,
            "tokens_per_second": float("nan"),
            "loaded_from": cfg.clt.load,
        }
    else:
        source = training_source(cfg, loaded, out_dir)
        result = train_clt(
            cfg,
            source,
            loaded.n_layers,
            loaded.d_model,
            stage,
            device,
            info,
            loaded_at=loaded.loaded_at or None,
        )
        clt = result.clt
        late = float((result.fired == 0).double().mean()) if result.fired_tokens else float("nan")
        train = {
            "train_tokens": result.tokens,
            "train_seconds": round(result.seconds, 3),
            "steps": result.steps,
            "tokens_per_second": result.tokens / max(result.seconds, 1e-9),
            # never fired on the training batches of the last 10 % of the steps
            "dead_fraction_late_training": late,
            "dead_fraction_late_training_tokens": result.fired_tokens,
            "precision": cfg.clt.precision,
            "world_size": info.world,
            "parallel": cfg.clt.parallel if info.enabled else "none",
        }
    clt.eval().requires_grad_(False)
    clt.fold_normalisation()
    metrics: dict[str, Any] = {}
    if info.is_main:
        save_clt(clt, stage)
        t0 = time.perf_counter()
        rows = load_heldout(out_dir)
        metrics = {
            "model": loaded.name,
            "kind": cfg.clt.kind,
            "activation": cfg.clt.activation,
            "n_features": cfg.clt.n_features,
            "n_layers": loaded.n_layers,
            **evaluate_clt(cfg, loaded, clt, rows),
            **train,
            "activations": {
                k: manifest[k] for k in ("mode", "corpus", "train_tokens", "heldout_tokens")
            },
            "eval_seconds": round(time.perf_counter() - t0, 3),
        }
        per_prompt = metrics.pop(PER_PROMPT, None)
        if per_prompt:  # per-example PD (model, replacement) for bootstrap intervals
            save_tensors(stage / "per_prompt.safetensors", per_prompt)
        log_path = stage / "train_log.jsonl"
        if log_path.is_file() and plot_curves(log_path, stage / "training_curves.png"):
            metrics["training_curves"] = "training_curves.png"
        metrics.update(
            run_metadata(config=cfg, seeds={"clt": cfg.clt.seed, "corpus": cfg.activations.seed})
        )
        write_json(metrics_path, metrics)
        log.info("clt stage wrote %s", stage)
    D.barrier(info)
    return metrics


def format_clt_table(m: dict[str, Any]) -> str:
    keys = [
        "nmse",
        "nmse_with_position_0",
        "nmse_without_position_0",
        "l0",
        "dead_fraction",
        "dead_fraction_tokens",
        "replacement_top1_agreement",
        "kl",
        "ce_loss_recovered",
        "model_prob_diff",
        "replacement_prob_diff",
        "train_tokens",
        "train_seconds",
        "tokens_per_second",
    ]
    width = max(len(k) for k in keys)
    lines = []
    for k in keys:
        v = m.get(k)
        lines.append(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
