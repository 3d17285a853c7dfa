"""pytest fixtures of the clt-bench plugin (registered by ``clt_bench.pytest_plugin`` when it
is asked for). All are session-scoped: the model loads and the reference CLT trains once.

- ``clt_bench_model`` / ``clt_bench_model64``: the model (``--clt-bench-model``, default the toy)
  in float32 / float64 (float64 for the exactness properties);
- ``clt_bench_task_batch``: 16 greater-than prompts, one per YY spread over 2..98 (discovery set);
- ``clt_bench_reference_clt``: ``--clt-bench-reference PATH`` (a CLT folder or a run folder with
  ``clt/``), else a small CLT trained for this session (``clt_bench.testing.reference_run``);
- ``clt_bench_transcoder``: the transcoder under test (``--clt-bench-transcoder PATH``);
- ``clt_bench_bars``: the pass bars (``--clt-bench-max-nmse`` ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

N_PROMPTS = 16


def _model_name(config: pytest.Config) -> str:
    return config.getoption("clt_bench_model") or "toy"


def _load(path: str | Path):
    from clt_bench.clt.circuit_tracer_io import load_clt

    path = Path(path)
    if not (path / "config.yaml").is_file() and (path / "clt" / "config.yaml").is_file():
        path = path / "clt"  # a run directory
    return load_clt(path)


@pytest.fixture(scope="session")
def clt_bench_model(pytestconfig: pytest.Config):
    from clt_bench.models import load_model

    return load_model(_model_name(pytestconfig))


@pytest.fixture(scope="session")
def clt_bench_model64(pytestconfig: pytest.Config):
    from clt_bench.models import load_model

    return load_model(_model_name(pytestconfig), dtype="float64")


@pytest.fixture(scope="session")
def clt_bench_task_batch(clt_bench_model):
    from clt_bench.config import RunConfig
    from clt_bench.features.task_attributions import one_per_yy
    from clt_bench.task.stage import load_task_batch

    return one_per_yy(load_task_batch(RunConfig(), clt_bench_model, "discovery"), N_PROMPTS)


@pytest.fixture(scope="session")
def clt_bench_reference_clt(pytestconfig: pytest.Config, tmp_path_factory):
    given = pytestconfig.getoption("clt_bench_reference")
    if given:
        return _load(given)
    from clt_bench.testing.reference_run import train_reference_clt

    run = tmp_path_factory.mktemp("clt-bench-reference")
    return _load(train_reference_clt(run, _model_name(pytestconfig)))


@pytest.fixture(scope="session")
def clt_bench_transcoder_path(pytestconfig: pytest.Config) -> Path:
    path = pytestconfig.getoption("clt_bench_transcoder")
    if not path:
        pytest.skip("no transcoder given (--clt-bench-transcoder PATH)")
    return Path(path)


@pytest.fixture(scope="session")
def clt_bench_transcoder(clt_bench_transcoder_path: Path):
    from clt_bench.errors import UserError

    try:
        return _load(clt_bench_transcoder_path)
    except UserError as err:
        pytest.fail(f"the transcoder does not load: {err}", pytrace=False)


@pytest.fixture(scope="session")
def clt_bench_bars(pytestconfig: pytest.Config) -> dict[str, Any]:
    from clt_bench.testing.bars import SCALE_BAND

    opt = pytestconfig.getoption
    band = opt("clt_bench_scale_band")
    return {
        "max_nmse": opt("clt_bench_max_nmse"),
        "scale_band": SCALE_BAND if band is None else band,
        "min_pd_ratio": opt("clt_bench_min_pd_ratio"),
        "min_recovery": opt("clt_bench_min_recovery"),
        "top_k": opt("clt_bench_top_k"),
    }
