"""Assertions a transcoder author can put in their own tests (and the pytest plugin runs).

Exactness (``check_*``; hold for any transcoder; run in float64) and quality bars (``assert_*``,
with ``measure_*`` for the numbers). With the plugin's fixtures (``pytest -p
clt_bench.pytest_plugin``; README, "In your own test suite")::

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
from clt_bench.testing.bars import (
    assert_circuit_recovery,
    assert_reconstruction,
    assert_reconstruction_scale,
    assert_replacement,
    measure_circuit_recovery,
    measure_reconstruction,
    measure_reconstruction_scale,
    measure_replacement,
)
from clt_bench.testing.graph_exactness import (
    check_capped_exactness,
    check_completeness,
    check_frozen_linearity,
    check_single_source_exactness,
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
    silent = zero_decoder_layers(clt)
    if len(silent) == clt.n_layers:
        raise AssertionError(
            "the decoder is zero: every W_dec entry is 0, so no feature writes anything and the "
            "transcoder outputs only b_dec"
        )
    assert not silent, (
        f"the decoder is zero into layer(s) {', '.join(map(str, silent))}: no feature writes "
        "to their MLP output"
    )


def zero_decoder_layers(clt: CrossLayerTranscoder) -> list[int]:
    """The output layers that no feature's decoder writes to (every W_dec entry into them 0)."""
    written = [False] * clt.n_layers
    with torch.no_grad():
        for source in range(clt.n_layers):
            for target in clt.target_layers(source):
                if bool(clt.layer_decoder(source, target).ne(0).any()):
                    written[target] = True
    return [i for i, w in enumerate(written) if not w]


__all__ = [
    "assert_circuit_recovery",
    "assert_fits_model",
    "assert_reconstruction",
    "assert_reconstruction_scale",
    "assert_replacement",
    "check_capped_exactness",
    "check_completeness",
    "check_frozen_linearity",
    "check_single_source_exactness",
    "measure_circuit_recovery",
    "measure_reconstruction",
    "measure_reconstruction_scale",
    "measure_replacement",
    "zero_decoder_layers",
]
