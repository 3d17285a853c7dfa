"""The activations stage's shards: written while the next one is computed, same bytes, and a
writer's error ends the stage."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bridge

from clt_bench.activations import stage as act_stage
from clt_bench.activations.extract import extract_activations
from clt_bench.activations.stage import run_activations_stage, training_rows
from clt_bench.activations.tokens import group_tokens
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.io import load_tensors
from clt_bench.models import LoadedModel
from clt_bench.models.tokenizer import gpt2_tokenizer

SETTINGS = [
    "activations.n_tokens=1200",
    "activations.eval_tokens=200",
    "activations.shard_tokens=256",
    "activations.shuffle_buffer=512",
    'activations.dtype="float32"',
    "activations.batch_size=4",
]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    bridge = tiny_bridge(n_layer=2, n_embd=16, seed=1)
    bridge.eval()
    return LoadedModel("tiny", bridge, gpt2_tokenizer())


def test_shards_hold_the_activations_of_their_rows(tmp_path, loaded):
    cfg = load_config("quick", SETTINGS)
    run_activations_stage(cfg, loaded, tmp_path)
    a = cfg.activations
    shards = sorted((tmp_path / "activations").glob("shard_*.safetensors"))
    groups = list(group_tokens(training_rows(cfg, loaded), a.shard_tokens))
    assert len(shards) == len(groups) >= 4  # several shards: each written beside the next
    for path, rows in zip(shards, groups, strict=True):
        parts = [extract_activations(loaded.bridge, r, torch.float32) for r in rows]
        saved = load_tensors(path)
        assert torch.equal(saved["resid_mid"], torch.cat([p[0] for p in parts]))
        assert torch.equal(saved["mlp_out"], torch.cat([p[1] for p in parts]))


def test_a_shard_that_cannot_be_written_ends_the_stage(tmp_path, loaded, monkeypatch):
    real = act_stage.save_tensors

    def save(path, tensors, metadata=None):
        if path.name == "shard_00001.safetensors":
            raise UserError(f"cannot write {path}: no space left on device.")
        return real(path, tensors, metadata)

    monkeypatch.setattr(act_stage, "save_tensors", save)
    with pytest.raises(UserError, match="shard_00001"):
        run_activations_stage(load_config("quick", SETTINGS), loaded, tmp_path)
