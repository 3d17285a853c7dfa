"""A GPT-2-architecture checkpoint laid out like the Hugging Face hub's ``gpt2`` repo, offline.

``write_hub_gpt2(home, ...)`` writes ``home/hub/models--gpt2/refs/main`` and
``snapshots/<commit>/`` with ``config.json``, ``model.safetensors`` under the hub's key names
(``h.0.attn.c_attn.weight``, ``wte.weight``: no ``transformer.`` prefix, no ``lm_head``), the real
GPT-2 tokenizer files (clt-bench's vendored copy) and a ``tokenizer_config.json`` that adds BOS by
default, as TransformerLens loads hub tokenizers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from clt_bench.paths import package_data

COMMIT = "a" * 40


def write_hub_gpt2(
    home: Path,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 64,
    seed: int = 0,
    commit: str = COMMIT,
    repo: str = "gpt2",
) -> Path:
    """Write the checkpoint into the HF cache under ``home`` (= ``HF_HOME``); returns the snapshot
    folder. Random weights from ``seed``."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    cfg = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=50257
    )
    cfg.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    (snap / "config.json").write_text(cfg.to_json_string())
    state = {k: v.detach().contiguous() for k, v in model.transformer.state_dict().items()}
    save_file(state, str(snap / "model.safetensors"), metadata={"format": "pt"})
    tok = package_data("gpt2-tokenizer")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok / name, snap / name)
    (snap / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": True, "model_max_length": 1024})
    )
    return snap
