"""A plain (non-editable) wheel carries task/baseline data, presets, tokenizer and toy weights."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("clt_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "clt_bench/_data/tasks/greater_than/task.toml",
        "clt_bench/_data/tasks/greater_than/nouns.txt",
        "clt_bench/data/gpt2-tokenizer/vocab.json",
        "clt_bench/data/gpt2-tokenizer/merges.txt",
        "clt_bench/data/toy/toy.safetensors",
        "clt_bench/presets/toy.toml",
    ):
        assert required in names, required
    assert any(n.startswith("clt_bench/_data/baselines/") for n in names)
