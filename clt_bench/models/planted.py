"""The embedded ``planted`` model (docs/methods.md, "planted"): GPT-2 architecture, 6 layers,
trained (``clt_bench.model_training.planted_train``) so that the high-level model of
``baselines/planted.toml`` is its mechanism on the task. The weights ship in
``clt_bench/data/planted/`` beside a model card (``config.json``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clt_bench.errors import UserError
from clt_bench.models.siit import Component
from clt_bench.paths import baselines_dir, package_data

# CLT_BENCH_PLANTED_DIR points at another folder (planted.safetensors + config.json), e.g. a retrain
PLANTED_DIR = Path(os.environ.get("CLT_BENCH_PLANTED_DIR") or package_data("planted"))
PLANTED_WEIGHTS_NAME = "planted.safetensors"


@dataclass(frozen=True)
class Variable:
    """One high-level variable and the components (at one position) that realise it."""

    name: str
    position: str  # "YY" | "END"
    components: tuple[Component, ...]


@dataclass(frozen=True)
class PlantedSpec:
    """The high-level model of ``baselines/planted.toml``: variables in causal order, bars."""

    variables: tuple[Variable, ...]
    acceptance: dict[str, float]
    raw: dict[str, Any]

    def aligned(self) -> dict[tuple[Component, str], str]:
        """(component, position) -> the variable it realises."""
        return {(c, v.position): v.name for v in self.variables for c in v.components}


def _component(text: str) -> Component:
    s = text.strip().lower()
    if s.startswith("mlp"):
        return Component(int(s[3:]), "mlp")
    layer, head = s.split(".")
    return Component(int(layer), "head", int(head))


def load_planted_spec(path: Path | None = None) -> PlantedSpec:
    """Read the high-level model and alignment from ``baselines/planted.toml``."""
    path = path or baselines_dir() / "planted.toml"
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        variables = tuple(
            Variable(
                str(v["name"]),
                str(v["position"]).upper(),
                tuple(_component(c) for c in v["components"]),
            )
            for v in data["high_level"]["variables"]
        )
        acceptance = {k: float(v) for k, v in data.get("acceptance", {}).items()}
    except (OSError, KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"the planted model's spec {path} is malformed ({err}).") from err
    return PlantedSpec(variables, acceptance, data)


def planted_weights(folder: Path | None = None) -> Path:
    return Path(folder or PLANTED_DIR) / PLANTED_WEIGHTS_NAME


def load_planted_module(folder: Path | None = None, dtype: torch.dtype = torch.float32):
    """The planted model as a ``GPT2LMHeadModel`` (arch from the config.json beside the weights)."""
    from clt_bench.models.toy import load_toy_module

    weights = planted_weights(folder)
    if not weights.is_file():
        raise UserError(
            f"the planted model's weights are missing ({weights}); run "
            f"`clt-bench toy-model train --model planted`."
        )
    return load_toy_module(weights, dtype=dtype)
