"""A plain (non-editable) wheel carries task/baseline data, presets, tokenizer and toy weights,
and declares dependency ranges (exact versions live in constraints.txt, for CI)."""

from __future__ import annotations

import re
import zipfile

import pytest


@pytest.mark.slow
def test_wheel_ships_data(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
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


@pytest.mark.slow
def test_wheel_declares_ranges_not_pins(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = dict(
        re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line.split(":", 1)[1].strip()).groups()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert requires["torch"] == ">=2.6"
    assert requires["transformer-lens"] in (">=4.3,<5", "<5,>=4.3")
    assert not any(spec.startswith("==") for spec in requires.values()), requires
