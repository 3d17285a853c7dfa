"""The plt stage: a sub-run with the [plt] section as its transcoder, sharing the run's data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.pipeline import STAGES
from clt_bench.plt import stage as plt_stage


def test_plt_section_becomes_the_sub_run_transcoder():
    cfg = load_config("toy", ["plt.n_features=64", "plt.lambda_s=0.01"])
    sub = plt_stage.plt_config(cfg)
    assert (sub.clt.kind, sub.clt.n_features, sub.clt.lambda_s) == ("plt", 64, 0.01)
    assert cfg.clt.kind == "clt" and cfg.clt.n_features == 512  # the run's own CLT untouched
    assert sub.section_hash("clt") != cfg.section_hash("clt")
    with pytest.raises(UserError, match="plt.kind"):
        plt_stage.plt_config(load_config("toy", ['plt.kind="clt"']))


def test_plt_stage_runs_after_features_and_feeds_compare():
    order = list(STAGES)
    assert order.index("features") < order.index("plt") < order.index("compare")
    assert "plt" in STAGES["compare"][1] and "clt" not in STAGES["plt"][1]


def test_plt_sub_run_links_shared_stages(tmp_path, monkeypatch):
    import clt_bench.pipeline as pipeline

    seen = {}

    def fake(cfg, run_dir, stages=None, resume=True, progress=print, model=None):
        seen.update(cfg=cfg, run_dir=Path(run_dir), stages=stages, model=model)
        return SimpleNamespace(
            results={
                "clt": {"nmse": 0.2, "l0": 9.0},
                "graphs": {"completeness_score": 0.7, "nmse": 1.0},
            }
        )

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    for stage in ("task", "baseline", "activations"):
        (tmp_path / stage).mkdir()
    ctx = SimpleNamespace(cfg=load_config("toy"), run_dir=tmp_path, model="MODEL")
    out = plt_stage.run_plt_stage(ctx)
    assert out == {"nmse": 0.2, "l0": 9.0, "completeness_score": 0.7}
    assert seen["run_dir"] == tmp_path / "plt" and seen["stages"] == ["clt", "graphs", "features"]
    assert seen["cfg"].clt.kind == "plt" and seen["model"] == "MODEL"
    for stage in ("task", "baseline", "activations"):
        assert (tmp_path / "plt" / stage).resolve() == (tmp_path / stage).resolve()
    off = SimpleNamespace(cfg=load_config("toy", ["plt.enabled=false"]), run_dir=tmp_path / "x")
    assert plt_stage.run_plt_stage(off) == {"enabled": False}
    assert not (tmp_path / "x").exists()
