"""Bad input ends in one sentence and exit code 2, and loses nothing: broken CLT folders,
unwritable results folders, a stage killed half-way and resumed."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from clt_bench.cli import main
from clt_bench.clt.circuit_tracer_io import load_clt, save_clt
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.io import load_tensors, read_json, save_tensors, write_json


def _clt_dir(tmp_path: Path, n_layers: int = 4, d_model: int = 128) -> Path:
    """A random CLT shaped for the toy model (4 layers x d_model 128), saved."""
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(CLTSpec(n_layers, d_model, 8, "jumprelu"))
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return save_clt(clt, tmp_path / "clt")


def _one_sentence(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def _attribute(clt: Path, tmp_path: Path) -> int:
    return main(
        [
            "attribute",
            "--model",
            "toy",
            "--clt",
            str(clt),
            "--prompt",
            "The war lasted from the year 1732 to the year 17",
            "--out",
            str(tmp_path / "g.json"),
        ]
    )


def test_config_yaml_that_is_a_list(tmp_path, capsys):
    d = _clt_dir(tmp_path)
    (d / "config.yaml").write_text("- model_kind\n- cross_layer_transcoder\n")
    assert _attribute(d, tmp_path) == 2
    _one_sentence(capsys, "config.yaml", "must be a mapping", "not a list")


def test_config_yaml_lacking_keys(tmp_path, capsys):
    d = _clt_dir(tmp_path)
    (d / "config.yaml").write_text("model_kind: transcoder_set\n")  # no transcoders list
    assert _attribute(d, tmp_path) == 2
    _one_sentence(capsys, "lists no 'transcoders' files")


def test_config_yaml_contradicting_the_weights(tmp_path):
    d = _clt_dir(tmp_path)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["d_transcoder"] = 16
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="d_transcoder = 16 but the weight files hold 8"):
        load_clt(d)


@pytest.mark.parametrize("name", ["W_enc_1", "W_dec_2"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_weights(tmp_path, capsys, name, damage):
    d = _clt_dir(tmp_path)
    f = d / f"{name}.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00\xff" * 64)
    assert _attribute(d, tmp_path) == 2
    _one_sentence(capsys, f"{name}.safetensors", "is not a readable safetensors file")


def test_missing_decoder_file(tmp_path, capsys):
    d = _clt_dir(tmp_path)
    (d / "W_dec_3.safetensors").unlink()
    assert _attribute(d, tmp_path) == 2
    _one_sentence(capsys, "has no W_dec_3.safetensors", "states n_layers = 4")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("tensor", ["W_dec_1", "b_enc_2"])
def test_nan_or_inf_in_a_loaded_clt(tmp_path, capsys, bad, tensor):
    d = _clt_dir(tmp_path)
    f = d / ("W_dec_1.safetensors" if tensor == "W_dec_1" else "W_enc_2.safetensors")
    t = load_tensors(f)
    t[tensor].view(-1)[3] = bad
    save_tensors(f, t)
    assert _attribute(d, tmp_path) == 2
    param = "W_dec.1" if tensor == "W_dec_1" else "b_enc"
    _one_sentence(capsys, "1 NaN/Inf values", f"'{param}'")


def test_clt_for_a_different_model_shape(tmp_path, capsys):
    d = _clt_dir(tmp_path, n_layers=3, d_model=16)
    assert _attribute(d, tmp_path) == 2
    _one_sentence(capsys, "3 layers x d_model 16", "the model has 4 x 128")


def test_unwritable_results_folder(tmp_path, capsys):
    """A results path under a file (as under a read-only or missing mount): one sentence."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    assert main(["task", "--model", "toy", "--set", "task.n=8", "--out", str(blocker / "run")]) == 2
    _one_sentence(capsys, "results")


@pytest.mark.parametrize(
    "code,words", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left on device")]
)
def test_read_only_or_full_disk_keeps_the_old_file(tmp_path, monkeypatch, code, words):
    """An OSError while writing: UserError with the reason, the old file intact, no temp left."""
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})
    import os

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr("clt_bench.io.os.replace", fail)
    with pytest.raises(UserError, match=words) as info:
        write_json(path, {"new": 2})
    assert "\n" not in str(info.value)
    assert read_json(path) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_oserror_outside_our_writers_is_one_sentence(monkeypatch, capsys):
    def fail(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/results/x")

    monkeypatch.setattr("clt_bench.cli.gate.check", fail)
    parser_main = main(["check", "whatever"])
    assert parser_main == 2
    _one_sentence(capsys, "/results/x", "Permission denied")


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_kill_during_a_stage_then_resume_gives_the_same_outputs(tmp_path, monkeypatch):
    """The task stage is killed after writing metrics.json but before per_prompt.safetensors
    and its stage.json; the rerun recomputes it and every output matches an uninterrupted run
    (up to the wall-clock fields)."""
    from clt_bench.config import load_config
    from clt_bench.pipeline import run_pipeline
    from clt_bench.task import stage as task_stage

    cfg = load_config("toy", ["task.n=24"])
    quiet = {"progress": lambda _m: None}
    run_pipeline(cfg, tmp_path / "clean", stages=["task"], **quiet)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(task_stage, "save_per_prompt", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, tmp_path / "killed", stages=["task"], **quiet)
    partial = tmp_path / "killed" / "task"
    assert (partial / "metrics.json").is_file() and not (partial / "stage.json").exists()
    run_pipeline(cfg, tmp_path / "killed", stages=["task"], **quiet)

    a, b = _files(tmp_path / "clean"), _files(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".json"):
            ja, jb = read_json(tmp_path / "clean" / name), read_json(tmp_path / "killed" / name)
            for j in (ja, jb):
                j.pop("wall_seconds", None), j.pop("seconds", None)
            assert ja == jb, name
        else:
            assert a[name] == b[name], name
    assert not list((tmp_path / "killed").rglob("*.tmp"))
    shutil.rmtree(tmp_path / "clean")
