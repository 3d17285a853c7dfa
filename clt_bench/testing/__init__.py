"""Assertions a transcoder author can put in their own tests (and the pytest plugin runs).

Exactness (hold for any transcoder; run in float64)::

    check_completeness, check_capped_exactness, check_single_source_exactness,
    check_frozen_linearity

Quality bars (``measure_*`` give the numbers)::

    assert_reconstruction, assert_replacement, assert_circuit_recovery

Example, with the plugin's fixtures (``pytest -p clt_bench.pytest_plugin``)::

    from clt_bench import testing as T

    def test_my_clt(clt_bench_model, clt_bench_task_batch):
        clt = load_clt("my-clt")  # circuit-tracer layout
        T.assert_fits_model(clt, clt_bench_model)
        T.assert_replacement(clt_bench_model, clt, clt_bench_task_batch, min_pd_ratio=0.8)
"""

from __future__ import annotations

import torch

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.models.sources import LoadedModel
from clt_bench.testing.attribution import (
    check_capped_exactness,
    check_completeness,
    check_frozen_linearity,
    check_single_source_exactness,
)
from clt_bench.testing.bars import (
    assert_circuit_recovery,
    assert_reconstruction,
    assert_replacement,
    measure_circuit_recovery,
    measure_reconstruction,
    measure_replacement,
)


def assert_fits_model(clt: CrossLayerTranscoder, loaded: LoadedModel) -> None:
    """The transcoder has the model's layers and width and only finite weights."""
    shape = (clt.n_layers, clt.spec.d_model)
    assert shape == (loaded.n_layers, loaded.d_model), (
        f"the transcoder has {shape[0]} layers x d_model {shape[1]}; the model has "
        f"{loaded.n_layers} x {loaded.d_model}"
    )
    bad = [n for n, p in clt.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite values in {', '.join(bad)}"


__all__ = [
    "assert_circuit_recovery",
    "assert_fits_model",
    "assert_reconstruction",
    "assert_replacement",
    "check_capped_exactness",
    "check_completeness",
    "check_frozen_linearity",
    "check_single_source_exactness",
    "measure_circuit_recovery",
    "measure_reconstruction",
    "measure_replacement",
]
