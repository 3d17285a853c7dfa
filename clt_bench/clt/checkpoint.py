"""Training checkpoints in one safetensors file: weights, AdamW state, RNG, data position.

Written atomically every N steps; loading it and continuing gives bit-identical weights on CPU.
Sharded (FSDP2) tensors are gathered to full tensors on save and re-sharded on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clt_bench.clt.distributed import full, like
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.io import load_tensors, save_tensors

ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


def save_checkpoint(
    path: Path,
    clt: CrossLayerTranscoder,
    opt: torch.optim.Optimizer,
    fired: torch.Tensor,
    meta: dict[str, Any],
    write: bool = True,
) -> None:
    """Gather everything (a collective under FSDP2: call on every rank); rank 0 writes."""
    tensors: dict[str, torch.Tensor] = {}
    for name, t in clt.state_dict().items():
        tensors[f"model.{name}"] = full(t).detach().cpu()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = opt.state.get(p, {})
        for key in ADAM_KEYS:
            if key in state:
                tensors[f"opt.{i}.{key}"] = full(state[key]).detach().cpu()
    tensors["fired"] = fired.detach().cpu()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if write:
        save_tensors(path, tensors, metadata={"meta": json.dumps(meta)})


def read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


def load_checkpoint(
    path: Path, clt: CrossLayerTranscoder
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights into the (unwrapped) ``clt``; return all tensors and the metadata."""
    tensors = load_tensors(path)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        clt.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path} does not match this CLT's shape; delete it or "
            f"restore the config it was trained with."
        ) from err
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return tensors, read_meta(path)


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put the saved AdamW moments back, laid out like the (possibly sharded) parameters."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}.step" not in tensors:
            continue
        opt.state[p] = {
            "step": tensors[f"opt.{i}.step"].clone(),
            "exp_avg": like(p, tensors[f"opt.{i}.exp_avg"]),
            "exp_avg_sq": like(p, tensors[f"opt.{i}.exp_avg_sq"]),
        }
