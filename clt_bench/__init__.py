"""clt-bench: do cross-layer transcoders find the mechanisms we already know are there?

The public Python API (``clt_bench.api``), imported lazily so ``import clt_bench`` stays cheap::

    from clt_bench import load_config, load_model, load_clt, load_task_batch
    from clt_bench import build_graph, score_features, run_pipeline, read_metrics

Metric definitions: ``docs/methods.md``; stages and file formats: ``docs/architecture.md``;
a walk-through: ``examples/quickstart.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (PEP 562: resolved on first access)
_LAZY = {
    "load_config": "clt_bench.api",
    "load_model": "clt_bench.api",
    "load_clt": "clt_bench.api",
    "load_task_batch": "clt_bench.api",
    "build_graph": "clt_bench.api",
    "score_features": "clt_bench.api",
    "FeatureScores": "clt_bench.api",
    "run_pipeline": "clt_bench.api",
    "read_metrics": "clt_bench.api",
    "RunConfig": "clt_bench.config",
    "UserError": "clt_bench.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clt_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
