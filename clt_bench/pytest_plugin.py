"""The clt-bench pytest plugin (entry point ``pytest11``: ``clt_bench.pytest_plugin``).

Off unless asked for: installed, it only adds its command-line options. It switches on with

- ``pytest --clt-bench-transcoder PATH``: run the conformance suite
  (``clt_bench.testing.conformance``, one test per property) on the transcoder at PATH, in
  circuit-tracer's layout; without other test paths only that suite runs;
- ``pytest --clt-bench`` or ``pytest -p clt_bench.pytest_plugin``: make the fixtures
  (``clt_bench.testing.fixtures``) available to your own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NAME = "clt_bench.pytest_plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("clt-bench", "clt-bench transcoder conformance")
    g.addoption("--clt-bench", action="store_true", help="enable the clt-bench fixtures")
    g.addoption(
        "--clt-bench-transcoder",
        metavar="PATH",
        default=None,
        help="run the clt-bench conformance suite on this transcoder (circuit-tracer "
        "layout: config.yaml, W_enc_i / W_dec_i .safetensors)",
    )
    g.addoption(
        "--clt-bench-model",
        default="toy",
        help="model the transcoder belongs to (toy | gpt2 | hf:<name>; default toy)",
    )
    g.addoption(
        "--clt-bench-reference",
        metavar="PATH",
        default=None,
        help="reference CLT (folder or run folder) for clt_bench_reference_clt, "
        "instead of training a small one for the session",
    )
    g.addoption(
        "--clt-bench-max-nmse",
        type=float,
        default=0.3,
        help="reconstruction bar: held-out NMSE at most this (default 0.3)",
    )
    g.addoption(
        "--clt-bench-scale-band",
        type=_band,
        default=None,
        metavar="LO,HI",
        help="reconstruction-scale bar: per layer, the best scalar on the transcoder's output "
        "in [LO, HI] (default 0.97,1.25)",
    )
    g.addoption(
        "--clt-bench-min-pd-ratio",
        type=float,
        default=0.75,
        help="replacement bar: replacement PD / model PD at least this (default 0.75)",
    )
    g.addoption(
        "--clt-bench-min-recovery",
        type=float,
        default=0.4,
        help="circuit-recovery bar: share of PD the top features recover on their own "
        "(default 0.4)",
    )
    g.addoption(
        "--clt-bench-top-k",
        type=int,
        default=32,
        help="circuit recovery: how many top features (default 32)",
    )


def _band(text: str) -> tuple[float, float]:
    import argparse

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI, got {text!r}")
    return lo, hi


def _asked_for(config: pytest.Config) -> bool:
    explicit = NAME in (getattr(config.option, "plugins", None) or [])
    return bool(
        config.getoption("clt_bench") or config.getoption("clt_bench_transcoder") or explicit
    )


def pytest_configure(config: pytest.Config) -> None:
    if not _asked_for(config):
        return
    from clt_bench.testing import conformance, fixtures

    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "clt_bench.testing.fixtures")
    path = config.getoption("clt_bench_transcoder")
    if not path:
        return
    if not Path(path).is_dir():
        raise pytest.UsageError(f"--clt-bench-transcoder {path}: no such folder.")
    suite = str(Path(conformance.__file__))
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(suite)  # the user's own paths, plus the suite
    else:
        config.args[:] = [suite]  # no paths given: run only the conformance suite


def pytest_report_header(config: pytest.Config) -> str | None:
    path = config.getoption("clt_bench_transcoder")
    return f"clt-bench conformance suite on {path}" if path else None
