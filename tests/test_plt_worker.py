"""Stages in a second process beside the CLT (the baseline, then the plt stage): same
results as a serial run at the same thread counts, the main process waits for them where it
reads them, failures end the run with one sentence, the decision rule and the thread budget."""

from __future__ import annotations

import json

import pytest
import torch

from clt_bench import plt_worker, threads
from clt_bench.cli import main
from clt_bench.config import load_config

TINY = [
    "--model", "toy",
    "--set", "clt.n_steps=20", "--set", "plt.n_steps=20", "--set", "clt.n_features=32",
    "--set", "plt.n_features=32", "--set", "activations.n_tokens=8000",
    "--set", "activations.eval_tokens=512", "--set", "clt.batch_tokens=256",
    "--set", "plt.batch_tokens=256", "--set", "clt.eval_tokens=128", "--set", "plt.eval_tokens=128",
    "--set", "activations.shuffle_buffer=4096", "--set", "task.n=24", "--set", "task.family_n=4",
    "--set", "baseline.n_examples=12", "--set", "baseline.discovery_examples=8",
    "--set", "baseline.n_random=2", "--set", "baseline.neuron_examples=6",
    "--set", "baseline.neuron_candidates=4", "--set", "baseline.curve_dense=3",
    "--set", "baseline.max_steps=2", "--set", "graphs.n_prompts=2", "--set", "features.top_k=4",
    "--set", "features.n_plots=1", "--set", "features.curve_dense=3",
]  # fmt: skip
STAGES = "task,baseline,activations,clt,graphs,features,plt"


def test_overlap_rule(monkeypatch):
    names = ["activations", "clt", "plt"]
    monkeypatch.setattr(plt_worker, "available_cores", lambda: 2)
    assert plt_worker.can_overlap(load_config("toy"), names)  # auto threads: 1 + 1 on 2 cores
    assert plt_worker.can_overlap(load_config("toy", ["clt.threads=1", "plt.threads=1"]), names)
    assert not plt_worker.can_overlap(load_config("toy"), ["activations", "plt"])
    assert not plt_worker.can_overlap(load_config("toy", ["plt.enabled=false"]), names)
    assert not plt_worker.can_overlap(load_config("toy", ["clt.threads=2"]), names)
    assert not plt_worker.can_overlap(load_config("toy", ["model.device=cuda"]), names)
    monkeypatch.setattr(plt_worker, "available_cores", lambda: 1)
    assert not plt_worker.can_overlap(load_config("toy"), names)


def test_thread_budget(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.total() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.total() == threads.available_cores()
    before = torch.get_num_threads()
    try:
        threads.set_budget(1)
        assert threads.budget() == 1 and torch.get_num_threads() == 1
        with threads.training(2) as n:  # an explicit setting wins for the training loop
            assert n == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1  # and the stages after it get the budget back
        with threads.training(0) as n:  # auto: the budget
            assert n == 1
        threads.set_budget(None)
        assert threads.budget() == threads.total()
        monkeypatch.setattr(threads, "total", lambda: 4)
        assert plt_worker.worker_threads(load_config("toy")) == 2
        assert plt_worker.worker_threads(load_config("toy", ["plt.threads=3"])) == 3
    finally:
        threads.set_budget(None)
        torch.set_num_threads(before)


@pytest.mark.slow
def test_plt_beside_the_clt_gives_the_serial_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plt_worker, "available_cores", lambda: 2)
    # the worker runs the baseline too (the default, set here so the test says it), so the main
    # process must wait for it before its features stage
    monkeypatch.setattr(plt_worker, "WORKER_STAGES", ("baseline", "plt"))
    # like with like: every computation at one thread in both runs (serial: a budget of 1;
    # overlap: 2 threads split 1 + 1 between the processes)
    pinned = ["--set", "clt.threads=1", "--set", "plt.threads=1"]
    runs = {}
    for mode, total in (("serial", 1), ("overlap", 2)):
        monkeypatch.setattr(threads, "total", lambda total=total: total)
        out = tmp_path / mode
        extra = ["--serial"] if mode == "serial" else []
        assert main(["run", "--out", str(out), "--stages", STAGES, *TINY, *pinned, *extra]) == 0
        runs[mode] = out
        assert threads.budget() == total  # the main process has every thread back
    assert (runs["overlap"] / plt_worker.LOG_NAME).is_file()
    assert not (runs["serial"] / plt_worker.LOG_NAME).exists()
    log = (runs["overlap"] / plt_worker.LOG_NAME).read_text()
    assert "baseline: finished" in log and "plt: finished" in log  # both ran in the worker
    # the features stage waited for the worker's baseline: it read the same circuit
    circuits = [json.loads((runs[m] / "features/metrics.json").read_text()) for m in runs]
    assert circuits[0]["circuit"] and circuits[0]["circuit"] == circuits[1]["circuit"]
    for f in ("plt/stage.json", "clt/stage.json", "baseline/stage.json"):
        a, b = (json.loads((runs[m] / f).read_text())["summary"] for m in ("serial", "overlap"))
        timing = ("seconds", "tokens_per_second")
        a, b = ({k: v for k, v in d.items() if not k.endswith(timing)} for d in (a, b))
        assert a == b, f
        assert a, f
    # resumed: nothing recomputed, no worker started for a current plt stage
    (runs["overlap"] / plt_worker.LOG_NAME).unlink()
    assert main(["run", "--out", str(runs["overlap"]), "--stages", STAGES, *TINY, *pinned]) == 0
    assert not (runs["overlap"] / plt_worker.LOG_NAME).exists()
    # a changed [plt] section: the worker resumes the baseline and recomputes the plt stage; the
    # main process resumes its stages (a resumed worker stage makes nothing stale)
    capsys.readouterr()
    args = ["run", "--out", str(runs["overlap"]), "--stages", STAGES, *TINY, *pinned]
    assert main([*args, "--set", "plt.lr=0.002"]) == 0
    said = capsys.readouterr().out
    assert "baseline: done earlier (resumed) in a second process" in said
    assert "features: done earlier (resumed)" in said and "clt: done earlier (resumed)" in said
    assert "plt: finished in" in said
    # a recomputed input (--no-resume) recomputes the plt stage in the worker
    assert (
        main(
            [
                "run",
                "--out",
                str(runs["overlap"]),
                "--stages",
                STAGES,
                "--no-resume",
                *TINY,
                *pinned,
            ]
        )
        == 0
    )
    assert "plt: finished" in (runs["overlap"] / plt_worker.LOG_NAME).read_text()


def test_a_failing_worker_ends_the_run_with_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plt_worker, "available_cores", lambda: 2)
    # an existing folder that holds no transcoder passes the config check and fails in the
    # worker, when the plt stage loads it
    (tmp_path / "empty").mkdir()
    rc = main(
        [
            "run", "--out", str(tmp_path / "r"), "--stages", "task,activations,clt,plt",
            *TINY, "--set", f'plt.load="{tmp_path / "empty"}"',
        ]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "failed in their worker process" in err and plt_worker.LOG_NAME in err
