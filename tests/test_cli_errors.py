"""Bad input ends with one clear sentence and exit code 2, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from clt_bench.cli import main
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.task.spec import load_task


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_model_exit_2(capsys, tmp_path):
    code, err = _run(capsys, "task", "--model", "nope", "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: unknown model 'nope'") and err.count("\n") == 0


def test_unknown_task_exit_2(capsys, tmp_path):
    code, err = _run(capsys, "task", "--task", "less_than", "--out", str(tmp_path))
    assert code == 2 and "unknown task 'less_than'" in err


def test_unknown_config_key_exit_2(capsys, tmp_path):
    code, err = _run(capsys, "task", "--set", "task.bogus=1", "--out", str(tmp_path))
    assert code == 2 and "unknown config key 'task.bogus'" in err


def test_wrong_type_and_unknown_preset():
    with pytest.raises(UserError, match="must be int"):
        load_config("toy", ["task.n='many'"])
    with pytest.raises(UserError, match="unknown preset"):
        load_config("gpt7")


def test_gpt2_offline_exit_2(capsys, tmp_path, isolated_hf_cache):
    code, err = _run(capsys, "task", "--model", "gpt2", "--out", str(tmp_path))
    assert code == 2 and "not reachable" in err and "'toy'" in err


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda t: t.replace('name = "greater_than"', ""), "missing the key 'name'"),
        (lambda t: t.replace("[year_filter]", "[year_filterz]"), "unknown key 'year_filterz'"),
        (lambda t: t + "\n[[broken", "not valid TOML"),
        (lambda t: t.replace('relation = "lt"', 'relation = "sideways"', 1), "relation"),
    ],
)
def test_malformed_task_data(tmp_path, mutation, message):
    from clt_bench.paths import tasks_dir

    src = tasks_dir() / "greater_than"
    dst = tmp_path / "greater_than"
    shutil.copytree(src, dst)
    toml = dst / "task.toml"
    toml.write_text(mutation(toml.read_text()))
    with pytest.raises(UserError, match=message):
        load_task("greater_than", root=tmp_path)


@pytest.mark.slow
def test_task_data_ships_in_package_layout(built_wheel, tmp_path):
    """Unpacked from the wheel (as pip would install it), the package finds its own task data."""
    site = tmp_path / "site"
    zipfile.ZipFile(built_wheel).extractall(site)
    code = (
        "import clt_bench.paths as p; from clt_bench.task.spec import load_task; "
        "t = load_task('greater_than'); print(p.tasks_dir()); print(p.baselines_dir()); "
        "print(t.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tasks, baselines, name = proc.stdout.split()
    assert Path(tasks) == site / "clt_bench" / "_data" / "tasks"
    assert Path(baselines) == site / "clt_bench" / "_data" / "baselines"
    assert name == "greater_than"
