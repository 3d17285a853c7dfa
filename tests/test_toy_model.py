"""The embedded toy model: shipped weights reach the task numbers; corpus and training behave."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from clt_bench.cli import main
from clt_bench.io import load_tensors, read_json
from clt_bench.model_training import toy_train
from clt_bench.model_training.synthetic_corpus import BOS_PREFIX, MAX_TOKENS, generate_corpus
from clt_bench.model_training.toy_train import (
    ToyTrainConfig,
    century_token_ids,
    load_trained,
    loss_positions,
    train_toy,
)
from clt_bench.models import LoadedModel, load_model
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.models.toy import TOY_CONFIG, TOY_WEIGHTS
from clt_bench.task.dataset import TaskBatch, build_dataset
from clt_bench.task.end_logits import end_logits, task_metrics
from clt_bench.task.metrics import answer_probs, yy_heatmap
from clt_bench.task.spec import load_task

LASTED = re.compile(r"The (\w+) lasted from the year (\d{4}) to the year (\d{4})\.")


@pytest.fixture(scope="module")
def toy() -> LoadedModel:
    return load_model("toy")


@pytest.fixture(scope="module")
def discovery(toy: LoadedModel) -> TaskBatch:
    return build_dataset(load_task("greater_than"), toy.tokenizer, "discovery", "hanna")


@pytest.fixture(scope="module")
def clean_logits(toy: LoadedModel, discovery: TaskBatch) -> torch.Tensor:
    return end_logits(toy.bridge, discovery.clean, discovery.end_pos)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_corpus(600, seed=11)


# ---- the shipped toy ---------------------------------------------------------------------------


def test_shipped_weights_small_fp16_and_documented() -> None:
    assert TOY_WEIGHTS.stat().st_size < 20 * 2**20
    info = read_json(TOY_CONFIG)
    for key in ("arch", "seed", "steps", "train_seconds", "corpus", "final_metrics"):
        assert key in info
    tensors = load_tensors(TOY_WEIGHTS)
    assert "lm_head.weight" not in tensors
    assert tensors["transformer.wte.weight"].dtype == torch.float16


def test_toy_is_a_bridge_with_hooks(toy: LoadedModel, discovery: TaskBatch) -> None:
    cfg = read_json(TOY_CONFIG)["arch"]
    assert toy.n_layers == cfg["n_layer"] and toy.d_model == cfg["n_embd"]
    _, cache = toy.bridge.run_with_cache(discovery.clean[:2])
    assert cache["blocks.0.hook_resid_mid"].shape == (2, discovery.clean.shape[1], toy.d_model)
    assert cache["blocks.1.hook_mlp_out"].shape == (2, discovery.clean.shape[1], toy.d_model)
    pattern = cache[f"blocks.{toy.n_layers - 1}.attn.hook_pattern"]
    assert pattern.shape[1] == cfg["n_head"]


def test_toy_task_numbers(
    toy: LoadedModel, discovery: TaskBatch, clean_logits: torch.Tensor
) -> None:
    assert len(discovery) == 490 and discovery.template == "hanna"
    clean = task_metrics(clean_logits, discovery)
    corrupt = task_metrics(
        end_logits(toy.bridge, discovery.corrupted, discovery.end_pos),
        discovery,
        prefix="corrupted_",
    )
    assert clean["prob_diff"] >= 0.75
    assert clean["cutoff_sharpness"] >= 0.03
    assert corrupt["corrupted_prob_diff"] <= -0.2


def test_toy_heatmap_is_upper_triangular(discovery: TaskBatch, clean_logits: torch.Tensor) -> None:
    heat = yy_heatmap(answer_probs(clean_logits, discovery.answer_ids), discovery.yy)  # [97, 100]
    z = torch.arange(100)[None, :]
    y = torch.arange(2, 99)[:, None]
    above = (heat * (z > y)).sum(1)
    below = (heat * (z <= y)).sum(1)
    assert (above > below).float().mean() >= 0.9
    # the mass just above the diagonal beats the mass far above it (small durations are likely)
    near = torch.stack([heat[i, yy + 1 : yy + 6].sum() for i, yy in enumerate(range(2, 90))])
    far = torch.stack([heat[i, yy + 30 :].sum() for i, yy in enumerate(range(2, 60))])
    assert near.mean() > far.mean()


def _expected_zz_vs_yy(logits: torch.Tensor, batch: TaskBatch) -> float:
    """Correlation between YY and the expected ZZ under the answer distribution."""
    p = answer_probs(logits, batch.answer_ids)
    expected = (p * torch.arange(100)).sum(1) / p.sum(1)
    return float(torch.corrcoef(torch.stack([expected, batch.yy.double()]))[0, 1])


def test_toy_moves_yy_with_attention(toy: LoadedModel, discovery: TaskBatch) -> None:
    """Masking every later position's attention to the YY token removes all YY information.

    The clean and corrupted prompts then give identical END logits and the prediction no longer
    tracks YY (prob_diff alone stays high: without YY the toy still favours large ZZ).
    """
    sub = discovery.subset(list(range(0, 490, 5)))

    def mask(scores: torch.Tensor, hook: object) -> torch.Tensor:
        scores = scores.clone()
        scores[:, :, sub.yy_pos + 1 :, sub.yy_pos] = float("-inf")
        return scores

    hooks = [(f"blocks.{layer}.attn.hook_attn_scores", mask) for layer in range(toy.n_layers)]
    clean = end_logits(toy.bridge, sub.clean, sub.end_pos)
    blocked = end_logits(toy.bridge, sub.clean, sub.end_pos, fwd_hooks=hooks)
    blocked_corrupt = end_logits(toy.bridge, sub.corrupted, sub.end_pos, fwd_hooks=hooks)
    assert torch.allclose(blocked, blocked_corrupt, atol=1e-4)
    assert _expected_zz_vs_yy(clean, sub) > 0.9
    assert abs(_expected_zz_vs_yy(blocked, sub)) < 0.3
    cs_clean = task_metrics(clean, sub)["cutoff_sharpness"]
    assert task_metrics(blocked, sub)["cutoff_sharpness"] < cs_clean / 5


# ---- the corpus --------------------------------------------------------------------------------


def test_corpus_is_deterministic(corpus: list[str]) -> None:
    assert generate_corpus(600, seed=11) == corpus
    assert generate_corpus(50, seed=12) != corpus[:50]
    assert generate_corpus(0, seed=1) == []


def test_corpus_documents_fit_the_context(corpus: list[str]) -> None:
    tok = gpt2_tokenizer()
    assert all(doc.startswith(BOS_PREFIX) for doc in corpus)
    assert max(len(ids) for ids in tok(corpus)["input_ids"]) <= MAX_TOKENS
    assert all(tok.encode(doc)[0] == tok.bos_token_id for doc in corpus[:20])


def test_corpus_holds_the_required_kinds_of_text(corpus: list[str]) -> None:
    text = " ".join(corpus)
    for needle in (
        "lasted from the year",
        "started in the year",
        "ended in the year",
        "is less than",
        "is greater than",
        "is smaller than",
        "years old",
        "costs $",
        "There were",
        "was born in",
        "In the year",
        "The cat sat",
    ):
        assert needle in text, needle
    assert re.search(r"\b1\d01\b", text), "no 'XX01' year in the corpus"
    assert re.search(r"\b\d+, \d+, \d+, \d+", text), "no number sequence in the corpus"


def test_corpus_task_sentences(corpus: list[str]) -> None:
    spec = load_task("greater_than")
    found = [m.groups() for doc in corpus for m in LASTED.finditer(doc)]
    assert len(found) > 300
    gaps = []
    for noun, start, end in found:
        s, e = int(start), int(end)
        assert noun in spec.nouns and s // 100 == e // 100 and e > s
        gaps.append(e - s)
    gaps_t = torch.tensor(gaps)
    assert (gaps_t <= 5).float().mean() > (gaps_t > 30).float().mean()  # skewed to small gaps
    big = generate_corpus(3000, seed=5)
    nouns = {m.group(1) for doc in big for m in LASTED.finditer(doc)}
    assert nouns == set(spec.nouns)


# ---- training ----------------------------------------------------------------------------------


def test_loss_positions_include_every_year_suffix() -> None:
    tok = gpt2_tokenizer()
    ids = tok.encode(BOS_PREFIX + "The war lasted from the year 1732 to the year 1745.")
    tokens = torch.full((1, 20), -1, dtype=torch.long)
    tokens[0, : len(ids)] = torch.tensor(ids)
    b, p = loss_positions(tokens, century_token_ids(tok), 2, torch.Generator().manual_seed(0))
    picked = set(p.tolist())
    century = [i for i, t in enumerate(ids[:-1]) if tok.decode([t]) == " 17"]
    assert set(century) <= picked and len(picked) == len(century) + 2
    assert max(picked) < len(ids) - 1 and (b == 0).all()


def test_training_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ToyTrainConfig(
        steps=4,
        batch_size=4,
        n_documents=8,
        checkpoint_every=2,
        eval_every=100,
        warmup_steps=2,
        final_eval_examples=8,
    )
    train_toy(cfg, tmp_path / "full")
    full = load_trained(tmp_path / "full").state_dict()
    assert not (tmp_path / "full" / "checkpoint").exists()

    save = toy_train._save_checkpoint

    def save_then_die(*args: object, **kwargs: object) -> None:
        save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    monkeypatch.setattr(toy_train, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_toy(cfg, tmp_path / "killed")
    monkeypatch.setattr(toy_train, "_save_checkpoint", save)
    assert not (tmp_path / "killed" / "toy.safetensors").exists()
    info = train_toy(cfg, tmp_path / "killed")  # resumes at step 2
    resumed = load_trained(tmp_path / "killed").state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert info["steps"] == 4 and [h["step"] for h in info["history"]] == [4]


def test_cli_rejects_bad_training_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toy-model", "train", "--steps", "0", "--out", "/nonexistent/x"]) == 2
    assert "steps" in capsys.readouterr().err
