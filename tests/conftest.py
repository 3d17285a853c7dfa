"""Shared fixtures (the real GPT-2 tokenizer, the task spec) and the hypothesis profiles.

Plain helpers live in ``tests/helpers.py``. ``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) makes
every property test derandomised: the same examples on every run, so CI is reproducible.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `clt-bench run`'s pre-flight without its calibration (seconds per run); tests/test_preflight.py
# calibrates
os.environ.setdefault("CLT_BENCH_PREFLIGHT", "estimate")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Loaded here, before any test module builds its own ``settings(...)``: those inherit every field
# they do not set (derandomize, print_blob) from the profile loaded at that moment.
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def tokenizer():
    from clt_bench.models.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def task_spec():
    from clt_bench.task.spec import load_task

    return load_task("greater_than")


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """This checkout's wheel, built once per session (no install)."""
    from helpers import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: a GPT-2 cached on this machine cannot be found.

    ``huggingface_hub`` and ``transformers`` read the cache location when first imported, so the
    environment variables alone are not enough once they are loaded; their constants are patched
    too.
    """
    home = tmp_path / "hf-home"
    hub = home / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, str(home if name == "HF_HOME" else hub))
    if hasattr(hf_constants, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return home
