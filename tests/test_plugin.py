"""The pytest plugin: off unless asked for; the conformance suite passes a trained CLT and fails
a CLT with a shuffled decoder on exactly the quality properties (exactness holds for any CLT)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest
import torch

import clt_bench.pytest_plugin as plugin
from clt_bench.clt.circuit_tracer_io import load_clt, save_clt

# pytester's in-process runs drop modules first imported inside them; `datasets` cannot be
# imported twice in one process (pyarrow extension types), so import what the suite uses here
for _name in (
    "datasets",
    "clt_bench.activations.stage",
    "clt_bench.testing.conformance",
    "clt_bench.testing.fixtures",
    "clt_bench.testing.reference_run",
    "clt_bench.models",
    "clt_bench.pipeline",
    "clt_bench.features.task_attributions",
    "clt_bench.compare.curve",
):
    importlib.import_module(_name)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
EXACTNESS = [
    "test_loads",
    "test_completeness",
    "test_capped_exactness",
    "test_single_source_exactness",
    "test_frozen_linearity",
]
QUALITY = [
    "test_reconstruction",
    "test_reconstruction_scale",
    "test_replacement",
    "test_circuit_recovery",
]


def test_entry_point_declared():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {plugin.NAME: plugin.NAME}


def test_off_unless_asked_for(pytester):
    """Loaded as an installed entry point is (plugins=[...]): options only, no fixtures, no
    suite; --clt-bench turns the fixtures on."""
    pytester.makepyfile(
        test_mine="""
        def test_uses_bars(clt_bench_bars):
            assert clt_bench_bars["max_nmse"] == 0.3
        def test_plain():
            assert True
    """
    )
    off = pytester.runpytest(plugins=[plugin])
    off.assert_outcomes(passed=1, errors=1)
    off.stdout.fnmatch_lines(["*fixture 'clt_bench_bars' not found*"])
    on = pytester.runpytest("--clt-bench", plugins=[plugin])
    on.assert_outcomes(passed=2)


def test_missing_transcoder_folder_is_a_usage_error(pytester, tmp_path):
    res = pytester.runpytest("-p", plugin.NAME, "--clt-bench-transcoder", str(tmp_path / "nope"))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--clt-bench-transcoder*no such folder*"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(good, broken): the plugin's small reference CLT and a copy with each layer's decoder
    rows permuted (encoders and everything else unchanged)."""
    from clt_bench.testing.reference_run import train_reference_clt

    root = tmp_path_factory.mktemp("plugin")
    good = train_reference_clt(root / "run")
    clt = load_clt(good)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in clt.W_dec:
            w.copy_(w[torch.randperm(w.shape[0], generator=gen)])
    return good, save_clt(clt, root / "broken")


def _outcomes(res) -> dict[str, str]:
    out = {}
    for rep in res.reprec.getreports("pytest_runtest_logreport"):
        name = rep.nodeid.split("::")[-1]
        if rep.when == "call" or rep.outcome != "passed":
            out[name] = rep.outcome
    return out


@pytest.mark.slow
def test_conformance_good_clt_passes(pytester, trained):
    good, _ = trained
    res = pytester.runpytest("-p", plugin.NAME, "--clt-bench-transcoder", str(good))
    assert _outcomes(res) == dict.fromkeys(EXACTNESS + QUALITY, "passed"), res.stdout.str()


@pytest.mark.slow
def test_conformance_shuffled_decoder_fails_the_quality_tests(pytester, trained):
    _, broken = trained
    res = pytester.runpytest("-p", plugin.NAME, "--clt-bench-transcoder", str(broken))
    expected = dict.fromkeys(EXACTNESS, "passed") | dict.fromkeys(QUALITY, "failed")
    assert _outcomes(res) == expected, res.stdout.str()
    res.stdout.fnmatch_lines(["*NMSE * is above the bar 0.3*"])


def _variant(trained, name: str, edit) -> Path:
    good, _ = trained
    clt = load_clt(good)
    with torch.no_grad():
        for w in clt.W_dec:
            edit(w)
    return save_clt(clt, good.parent.parent / name)


@pytest.mark.slow
def test_conformance_decoder_scaled_by_1_1_fails_only_the_scale_test(pytester, trained):
    """x1.1 on every decoder passes NMSE, replacement and recovery; the scale test names it."""
    scaled = _variant(trained, "scaled", lambda w: w.mul_(1.1))
    res = pytester.runpytest("-p", plugin.NAME, "--clt-bench-transcoder", str(scaled))
    expected = dict.fromkeys(EXACTNESS + QUALITY, "passed") | {
        "test_reconstruction_scale": "failed"
    }
    assert _outcomes(res) == expected, res.stdout.str()
    # fnmatch: "?" for the brackets, which would open a character class
    res.stdout.fnmatch_lines(["*best scalar on the reconstruction of layer*outside ?0.97, 1.25?*"])


@pytest.mark.slow
def test_conformance_zero_decoder_says_so_first(pytester, trained):
    zero = _variant(trained, "zero", lambda w: w.zero_())
    res = pytester.runpytest("-p", plugin.NAME, "--clt-bench-transcoder", str(zero))
    assert _outcomes(res)["test_loads"] == "failed", res.stdout.str()
    res.stdout.fnmatch_lines(["*the decoder is zero: every W_dec entry is 0*"])


@pytest.mark.slow
def test_reference_fixture_loads_a_run_dir(pytester, trained):
    good, _ = trained
    pytester.makepyfile(
        test_ref="""
        from clt_bench import testing as T
        def test_ref(clt_bench_reference_clt, clt_bench_model, clt_bench_task_batch):
            T.assert_fits_model(clt_bench_reference_clt, clt_bench_model)
            T.assert_replacement(clt_bench_model, clt_bench_reference_clt, clt_bench_task_batch)
    """
    )
    res = pytester.runpytest(
        "--clt-bench", "--clt-bench-reference", str(good.parent), plugins=[plugin]
    )
    res.assert_outcomes(passed=1)


# --- reconstruction scale and a zero decoder (issue 25) ---------------------------------------


def test_a_zero_decoder_is_named_as_such():
    from types import SimpleNamespace

    from clt_bench import testing as T
    from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder

    clt = CrossLayerTranscoder(CLTSpec(3, 8, 4, "jumprelu"))
    fits = SimpleNamespace(n_layers=3, d_model=8)
    with torch.no_grad():
        for w in clt.W_dec:
            w.normal_()
        T.assert_fits_model(clt, fits)
        clt.W_dec[0][:, 1].zero_()  # layer 1 still gets layer 1's own features
        T.assert_fits_model(clt, fits)
        clt.W_dec[1][:, 0].zero_()  # now nothing writes to layer 1
        with pytest.raises(AssertionError, match=r"decoder is zero into layer\(s\) 1:"):
            T.assert_fits_model(clt, fits)
        for w in clt.W_dec:
            w.zero_()
    with pytest.raises(AssertionError, match="the decoder is zero: every W_dec entry is 0"):
        T.assert_fits_model(clt, fits)


def test_reconstruction_scale_is_the_inverse_of_an_output_factor():
    """Scaling a transcoder's whole output (decoder and b_dec) by c divides the fitted scalar by
    c on every layer; the assertion fails a factor of 1.1 that NMSE's bar lets through."""
    from clt_bench import testing as T
    from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
    from clt_bench.models import load_model

    loaded = load_model("toy")
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(CLTSpec(loaded.n_layers, loaded.d_model, 16, "relu"))
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(std=0.05)
    base = T.measure_reconstruction_scale(loaded, clt, n_tokens=512)["scale"]
    with torch.no_grad():
        for w in clt.W_dec:
            w.mul_(1.1)
        clt.b_dec.mul_(1.1)
    scaled = T.measure_reconstruction_scale(loaded, clt, n_tokens=512)["scale"]
    assert scaled == pytest.approx([a / 1.1 for a in base], rel=1e-4)
    with torch.no_grad():
        for w in clt.W_dec:
            w.zero_()
        clt.b_dec.zero_()
    with pytest.raises(AssertionError, match="output is zero at layer"):
        T.assert_reconstruction_scale(loaded, clt, n_tokens=512)
