"""Helpers shared by several test modules (import as ``from helpers import ...``).

They live here rather than in conftest.py: ``from tests.conftest import ...`` only works when the
repository root happens to be on ``sys.path`` (``python -m pytest``), not under plain ``pytest``,
while pytest puts this folder on the path for every test module in it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: float = 900) -> str:
    """``python benchmarks/<script> args...`` in a new process; its stdout (raises on exit != 0)."""
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def tiny_bridge(
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A tiny random GPT-2-shaped TransformerBridge with the real tokenizer (full vocab)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from clt_bench.models.sources import wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=64, vocab_size=50257
    )
    model = GPT2LMHeadModel(cfg).to(dtype)
    return wrap_hf_gpt2(model, gpt2_tokenizer(), "tiny")


def build_wheel(out_dir: Path) -> Path:
    """Build this checkout's wheel into ``out_dir`` without the network; return its path.

    With hatchling importable (the ``test`` extra installs it) the build runs in this environment
    (``--no-build-isolation``); otherwise pip builds in an isolated environment, which needs
    hatchling from the package index.
    """
    import importlib.util

    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out_dir), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out_dir.glob("clt_bench-*.whl")
    return wheel


# the small task file several task tests write: a task named "mine" over nouns.txt, 40 balanced
# discovery prompts; a [templates.*] body goes after it
TASK_HEAD = """
name = "mine"
nouns_file = "nouns.txt"

[year_filter]
start = 1100
stop = 1900

[corruption]
yy = "01"

[answers]
count = {count}

[datasets.discovery]
n = 40
sampling = "balanced"
seed = 0
"""
GT_TEMPLATE = '[templates.t]\ntext = "The {noun} lasted from the year {XX}{YY} to the year {XX}"\n'


def task_head(count: int = 100) -> str:
    """``TASK_HEAD`` with ``count`` answers."""
    return TASK_HEAD.format(count=count)
