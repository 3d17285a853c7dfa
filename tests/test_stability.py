"""Feature matching across CLT seeds and the stability summary, on tiny random transcoders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from clt_bench.clt.circuit_tracer_io import save_clt
from clt_bench.errors import UserError
from clt_bench.graphs.random_clt import random_clt
from clt_bench.io import save_tensors, write_json
from clt_bench.stability.match import match_transcoders
from clt_bench.stability.summary import write_stability

L, D, F = 3, 16, 24


def _permuted(clt, perms, noise=0.0, seed=1):
    """A copy of ``clt`` whose layer-l features are ``perms[l]`` of the original's."""
    out = random_clt(L, D, F, seed=99)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out.W_enc.copy_(clt.W_enc)
        for layer, p in enumerate(perms):
            w = clt.W_dec[layer][p]
            out.W_dec[layer].copy_(
                w + noise * w.norm() / w.numel() ** 0.5 * torch.randn(w.shape, generator=gen)
            )
    return out


def test_matching_recovers_a_permutation_and_rejects_unrelated_features():
    a = random_clt(L, D, F, seed=0)
    perms = [torch.randperm(F, generator=torch.Generator().manual_seed(i)) for i in range(L)]
    b = _permuted(a, perms, noise=0.01)
    for layer, m in enumerate(match_transcoders(a, b)):
        # feature i of A sits at position j of B where perms[layer][j] == i
        expected = torch.argsort(perms[layer]).numpy()
        np.testing.assert_array_equal(m.partner, expected)
        assert m.cosine.min() > 0.99
    unrelated = match_transcoders(a, random_clt(L, D, F, seed=7))
    assert max(float(m.cosine.max()) for m in unrelated) < 0.9


def _fake_run(tmp, name, clt, rows, heat, answers=None):
    run = tmp / name
    save_clt(clt, run / "clt")
    (run / "features").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "features" / "features.csv", index=False)
    tensors = {"heatmaps": torch.from_numpy(heat).float()}
    if answers is not None:  # an exact task's answer per heatmap row (the features stage's)
        tensors["answers"] = torch.tensor(answers)
    save_tensors(run / "features" / "heatmaps.safetensors", tensors)
    write_json(run / "clt" / "stage.json", {"summary": {"nmse": 0.1 + 0.01 * len(name)}})
    return run


def test_stability_flags_labels_and_influence_share(tmp_path):
    a = random_clt(L, D, F, seed=0)
    ident = [torch.arange(F) for _ in range(L)]
    b = _permuted(a, ident, noise=0.01, seed=2)
    with torch.no_grad():  # seed B re-learns layer-1 feature 5 as something unrelated
        b.W_dec[1][5] = torch.randn(b.W_dec[1][5].shape, generator=torch.Generator().manual_seed(3))
    rows = [
        {
            "rank": 1,
            "feature": "L1/5",
            "layer": 1,
            "feature_id": 5,
            "label": "comparator",
            "influence": 3.0,
        },
        {
            "rank": 2,
            "feature": "L0/2",
            "layer": 0,
            "feature_id": 2,
            "label": "parity",
            "influence": 1.0,
        },
    ]
    heat = np.random.default_rng(0).normal(size=(2, 97, 100))
    ra = _fake_run(tmp_path, "a", a, rows, heat)
    rb = _fake_run(tmp_path, "bb", b, [dict(rows[1], rank=1)], heat[1:])
    (ra / "compare").mkdir()
    (ra / "compare" / "feature_generalisation.csv").write_text(
        "feature,hanna,descending\nL1/5,1.0,-0.5\nL0/2,0.9,-0.8\n"
    )
    summary = write_stability({0: ra, 1: rb}, tmp_path / "stability", threshold=0.9)
    gen = pd.read_csv(tmp_path / "stability" / "feature_generalisation_stable.csv")
    assert gen["feature"].tolist() == ["L0/2"] and gen["descending"].tolist() == [-0.8]
    stable = pd.read_csv(tmp_path / "stability" / "stable_features.csv")
    s0 = stable[stable["seed"] == 0].set_index("feature")
    assert not s0.loc["L1/5", "stable"] and s0.loc["L0/2", "stable"]
    assert s0.loc["L0/2", "rank_seed1"] == 1 and s0.loc["L1/5", "rank_seed1"] == -1
    per_seed = {r["seed"]: r for r in summary["per_seed"]}
    assert per_seed[0]["stable_influence_share"] == pytest.approx(0.25)
    assert per_seed[1]["stable_influence_share"] == pytest.approx(1.0)
    labels = pd.read_csv(tmp_path / "stability" / "labels.csv").set_index("label")
    assert labels.loc["parity", "seed0"] == 1 and labels.loc["parity", "stable_mean"] == 1.0
    assert labels.loc["comparator", "mean"] == 0.5 and labels.loc["comparator", "stable_mean"] == 0
    metrics = pd.read_csv(tmp_path / "stability" / "metrics_over_seeds.csv").set_index("metric")
    assert metrics.loc["clt.nmse", "mean"] == pytest.approx(0.115)
    assert (tmp_path / "stability" / "heatmaps_stable.png").stat().st_size > 10_000


def test_stable_heatmaps_mark_an_exact_tasks_answers(tmp_path, monkeypatch):
    from clt_bench.stability import summary as mod

    a = random_clt(L, D, F, seed=0)
    row = {"rank": 1, "feature": "L0/2", "layer": 0, "feature_id": 2, "label": "parity"}
    heat = np.random.default_rng(0).normal(size=(1, 97, 100))
    answers = [y + 1 for y in range(2, 99)]
    runs = [
        mod.SeedRun.load(s, _fake_run(tmp_path, f"s{s}", a, [row], heat, answers)) for s in (0, 1)
    ]
    stable = pd.DataFrame(
        [{**row, "seed": 0, "stable": True, "rank_seed1": 1, "match_seed1": "L0/2"}]
    ).assign(cosine_seed1=1.0)
    saved: list = []
    monkeypatch.setattr(mod, "save_figure", lambda fig, path: saved.append(fig))
    mod.stable_heatmaps(runs, stable, tmp_path / "heatmaps_stable.png")
    panels = [ax for ax in saved[0].axes if ax.get_title()]  # not the colour bars
    assert len(panels) == 2  # one per seed, each marking the answer cells
    for ax in panels:
        (line,) = ax.lines
        assert list(line.get_xdata()) == [z + 0.5 for z in answers]
    assert saved[0].texts[-1].get_text() == "squares: the correct ZZ of each YY"


def _fake_seed_runs(monkeypatch, tmp_path, plt_seeds=False, seeds=(3, 5)) -> list:
    """Run the stability stage with a fake ``run_subrun`` and stability summary; returns the
    calls: (cfg, run_dir, stages, shared) per sub-run, ("stability", dirs) per summary."""
    from clt_bench import stages
    from clt_bench.config import load_config
    from clt_bench.pipeline import link_shared
    from clt_bench.run_context import RunContext
    from clt_bench.stability import seeds as mod

    calls: list = []

    def fake_subrun(cfg, run_dir, names, *, share_from=None, shared=(), **kw):
        calls.append((cfg, Path(run_dir), list(names), list(shared)))
        link_shared(share_from, run_dir, shared)
        return SimpleNamespace(results={})

    monkeypatch.setattr(
        mod,
        "write_stability",
        lambda dirs, out, threshold: (
            calls.append(("stability", dict(dirs)))
            or {"stable_mean": 0.0, "n_top": 0, "stable_influence_share_mean": 0.0}
        ),
    )
    for s in ("task", "baseline", "activations", "plt"):
        (tmp_path / s).mkdir()
    cfg = mod.seeds_config(load_config("toy"), list(seeds), plt_seeds=plt_seeds)
    ctx = RunContext(cfg, tmp_path, _model="MODEL", run_subrun=fake_subrun, progress=str)
    assert stages.run_stability(ctx) == {"enabled": True}
    return calls


def test_stability_stage_shares_seed_independent_stages(tmp_path, monkeypatch):
    from clt_bench.config import load_config
    from clt_bench.stability import seeds as mod

    (sub, stab) = _fake_seed_runs(monkeypatch, tmp_path)
    cfg, run_dir, names, shared = sub
    assert cfg.clt.seed == 5 and cfg.stability.clt_seeds == ()
    assert cfg.plt.seed == load_config("toy").plt.seed  # shared: not the seed's
    assert names == ["clt", "graphs", "features", "compare", "stability", "report"]
    assert shared == ["task", "baseline", "activations", "plt"]
    seed_dir = tmp_path / "seeds" / "clt-seed5"
    assert run_dir == seed_dir
    for s in shared:
        assert (seed_dir / s).resolve() == (tmp_path / s).resolve()
    assert stab == ("stability", {3: tmp_path, 5: seed_dir})
    first = mod.seeds_config(load_config("toy"), [3, 5])
    assert first.clt.seed == 3 and first.stability.clt_seeds == (3, 5)
    with pytest.raises(UserError):
        mod.seeds_config(load_config("toy"), [1, 1])
    with pytest.raises(UserError):
        load_config("toy", ["stability.clt_seeds=[4]"])


def test_stability_stage_with_plt_seeds_trains_one_plt_per_seed(tmp_path, monkeypatch):
    (sub, _stab) = _fake_seed_runs(monkeypatch, tmp_path, plt_seeds=True)
    cfg, run_dir, names, shared = sub
    assert (cfg.clt.seed, cfg.plt.seed) == (5, 5) and "plt" in names and "plt" not in shared
    assert not (run_dir / "plt").exists()
    assert (run_dir / "activations").resolve() == (tmp_path / "activations").resolve()


def test_without_seeds_the_stability_stage_does_nothing(tmp_path):
    from clt_bench import stages
    from clt_bench.config import load_config
    from clt_bench.run_context import RunContext

    assert stages.run_stability(RunContext(load_config("toy"), tmp_path)) == {"enabled": False}


def test_plt_seeds_without_clt_seeds_is_bad_input(tmp_path):
    from clt_bench.cli import main

    assert main(["run", "--plt-seeds", "--out", str(tmp_path / "r")]) == 2
