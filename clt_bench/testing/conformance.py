"""The conformance suite ``pytest --clt-bench-transcoder PATH`` runs on a transcoder: one test per
property (README, "In your own test suite"), on the model of ``--clt-bench-model`` (default: the
toy), with the bars of the plugin's options.
"""

from __future__ import annotations

import pytest

from clt_bench import testing as T


@pytest.fixture(scope="module")
def clt64(clt_bench_transcoder):
    import copy

    return copy.deepcopy(clt_bench_transcoder).double()


@pytest.fixture(scope="module")
def prompt(clt_bench_task_batch):
    return clt_bench_task_batch.clean[len(clt_bench_task_batch) // 2]


@pytest.fixture(scope="module")
def targets(clt_bench_model64):
    from clt_bench.graphs.targets import answer_targets

    vocab_size = int(clt_bench_model64.bridge.cfg.d_vocab)
    return answer_targets(clt_bench_model64.tokenizer, vocab_size)[::10]


def test_loads(clt_bench_transcoder, clt_bench_model):
    T.assert_fits_model(clt_bench_transcoder, clt_bench_model)


def test_completeness(clt_bench_model64, clt64, prompt, targets):
    T.check_completeness(clt_bench_model64, clt64, prompt, targets)


def test_capped_exactness(clt_bench_model64, clt64, prompt):
    T.check_capped_exactness(clt_bench_model64, clt64, prompt, cap=5)


def test_single_source_exactness(clt_bench_model64, clt64, prompt, targets):
    T.check_single_source_exactness(clt_bench_model64, clt64, prompt, targets[:3])


def test_frozen_linearity(clt_bench_model64, clt64, prompt):
    T.check_frozen_linearity(clt_bench_model64, clt64, prompt)


def test_reconstruction(clt_bench_model, clt_bench_transcoder, clt_bench_bars):
    T.assert_reconstruction(
        clt_bench_model, clt_bench_transcoder, max_nmse=clt_bench_bars["max_nmse"]
    )


def test_reconstruction_scale(clt_bench_model, clt_bench_transcoder, clt_bench_bars):
    T.assert_reconstruction_scale(
        clt_bench_model, clt_bench_transcoder, band=clt_bench_bars["scale_band"]
    )


def test_replacement(clt_bench_model, clt_bench_transcoder, clt_bench_task_batch, clt_bench_bars):
    T.assert_replacement(
        clt_bench_model,
        clt_bench_transcoder,
        clt_bench_task_batch,
        min_pd_ratio=clt_bench_bars["min_pd_ratio"],
    )


def test_circuit_recovery(
    clt_bench_model, clt_bench_transcoder, clt_bench_task_batch, clt_bench_bars
):
    if clt_bench_model.name != "toy":
        pytest.skip("the circuit-recovery bar is calibrated on the toy model only")
    T.assert_circuit_recovery(
        clt_bench_model,
        clt_bench_transcoder,
        clt_bench_task_batch,
        top_k=clt_bench_bars["top_k"],
        min_fraction=clt_bench_bars["min_recovery"],
    )
