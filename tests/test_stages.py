"""The stage table (``clt_bench/stages.py``): every stage declared once, in an order that respects
what each reads, with a plain function that takes the run context; the plt stage's sub-run."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from types import SimpleNamespace

from clt_bench import stages
from clt_bench.config import RunConfig, load_config
from clt_bench.run_context import RunContext
from clt_bench.stages import STAGE_NAMES, STAGES

NAMED = {s.name: s for s in STAGES}


def test_every_stage_is_declared_once_with_a_run_function():
    assert len(set(STAGE_NAMES)) == len(STAGES)
    known = set(typing.get_type_hints(RunConfig))
    for i, stage in enumerate(STAGES):
        assert set(stage.sections) <= known, stage.name
        for need in stage.inputs:  # what a stage reads runs before it
            assert STAGE_NAMES.index(need) < i, (stage.name, need)
        assert inspect.getmodule(stage.run) is stages and stage.run.__name__ == f"run_{stage.name}"
        assert typing.get_type_hints(stage.run)["ctx"] is RunContext, stage.name


def test_plt_runs_after_features_and_feeds_compare_and_the_report():
    order = list(STAGE_NAMES)
    assert order.index("features") < order.index("plt") < order.index("compare")
    assert "plt" in NAMED["compare"].sections and "clt" not in NAMED["plt"].sections
    assert order.index("compare") < order.index("stability") < order.index("report")
    assert "stability" in NAMED["report"].inputs


def test_clt_hash_covers_the_task_it_is_scored_on():
    assert "task" in NAMED["clt"].sections and "activations" in NAMED["clt"].inputs


def test_plt_sub_run_links_shared_stages(tmp_path):
    seen = {}

    def fake(cfg, run_dir, stages, *, share_from=None, shared=(), model=None, **kw):
        seen.update(cfg=cfg, run_dir=Path(run_dir), stages=stages, model=model)
        seen.update(share_from=share_from, shared=shared)
        return SimpleNamespace(
            results={
                "clt": {"nmse": 0.2, "l0": 9.0},
                "graphs": {"completeness_score": 0.7, "nmse": 1.0},
            }
        )

    ctx = RunContext(load_config("toy"), tmp_path, _model="MODEL", run_subrun=fake)  # type: ignore[arg-type]
    out = stages.run_plt(ctx)
    assert out == {"nmse": 0.2, "l0": 9.0, "completeness_score": 0.7}
    assert seen["run_dir"] == tmp_path / "plt" and seen["stages"] == ("clt", "graphs", "features")
    assert seen["cfg"].clt.kind == "plt" and seen["model"] == "MODEL"
    assert seen["share_from"] == tmp_path
    assert seen["shared"] == ("task", "baseline", "activations")
    off = RunContext(load_config("toy", ["plt.enabled=false"]), tmp_path / "x")
    assert stages.run_plt(off) == {"enabled": False}
    assert not (tmp_path / "x").exists()
