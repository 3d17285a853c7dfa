"""Train the embedded toy model on the synthetic corpus (``clt-bench toy-model train``).

A ``GPT2LMHeadModel`` of the toy architecture, AdamW with warm-up and cosine decay, deterministic
from one seed. The full-vocabulary unembedding dominates the cost of so small a model, so the
full-vocabulary cross-entropy is taken at a subset of positions only, gathered before the tied
``lm_head``: every year suffix (after a century token " 10".." 18") plus ``sample_positions``
random others per sequence. Batches and positions come from generators seeded by ``(seed,
step)`` and checkpoints every ``checkpoint_every`` steps let a killed run resume to the same
weights. Writes ``<out>/toy.safetensors`` (the token embedding in fp16, the rest in fp32, no
``lm_head`` copy) and ``<out>/config.json`` (arch, seed, settings, history, final metrics).
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.io import load_tensors, read_json, run_metadata, save_tensors, write_json
from clt_bench.model_training.synthetic_corpus import MAX_TOKENS, corpus_settings, generate_corpus
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.models.toy import DEFAULT_TOY_ARCH, TOY_DIR, build_toy_module, load_toy_module
from clt_bench.task.dataset import TaskBatch, build_dataset
from clt_bench.task.end_logits import task_metrics
from clt_bench.task.spec import load_task

log = logging.getLogger(__name__)

# dropout off: the toy is trained briefly on a corpus far larger than what it can memorise
TRAIN_ARCH: dict[str, Any] = {
    **DEFAULT_TOY_ARCH,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


@dataclass(frozen=True)
class ToyTrainConfig:
    seed: int = 0
    steps: int = 1800
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    n_documents: int = 32_000
    corpus_seed: int = 1_000  # the CLT corpus uses other seeds; keep the toy's own
    sample_positions: int = 2  # random non-answer loss positions per sequence
    threads: int = 1  # torch CPU threads; fixed so that a rerun gives the same weights
    checkpoint_every: int = 200
    eval_every: int = 200
    final_eval_examples: int = 490  # discovery examples scored into config.json (490 = all)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.n_documents < self.batch_size:
            raise UserError("toy training needs steps >= 1 and n_documents >= batch_size >= 1.")
        if not (0 < self.lr < 1) or self.sample_positions < 0 or self.checkpoint_every < 1:
            raise UserError(
                "toy training needs 0 < lr < 1, sample_positions >= 0 and a checkpoint "
                "interval >= 1."
            )


def tokenize_corpus(docs: list[str], tok: PreTrainedTokenizerBase) -> torch.Tensor:
    """Documents -> [n_docs, MAX_TOKENS] token ids, right-padded with -1."""
    out = torch.full((len(docs), MAX_TOKENS), -1, dtype=torch.long)
    for i, ids in enumerate(tok(docs)["input_ids"]):
        if len(ids) > MAX_TOKENS:
            raise UserError(f"corpus document {i} has {len(ids)} tokens (> {MAX_TOKENS}).")
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def century_token_ids(tok: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of " 10" .. " 18" (the XX tokens of the task's years); [9]."""
    return torch.tensor([tok.encode(f" {c}")[0] for c in range(10, 19)], dtype=torch.long)


def lr_at(step: int, cfg: ToyTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def loss_positions(
    tokens: torch.Tensor, centuries: torch.Tensor, n_random: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to compute the loss: (batch index [k], position index [k]) of the *inputs*.

    Every position whose input is a century token and whose target exists, plus ``n_random``
    random other positions with a target per sequence. ``tokens``: [batch, pos], -1 = padding.
    """
    has_target = torch.zeros_like(tokens, dtype=torch.bool)
    has_target[:, :-1] = tokens[:, 1:] >= 0
    answer = torch.isin(tokens, centuries) & has_target
    noise = torch.rand(tokens.shape, generator=gen)
    noise[~has_target | answer] = 2.0  # never sampled
    k = min(n_random, tokens.shape[1])
    picked = torch.zeros_like(answer)
    if k:
        idx = noise.topk(k, dim=1, largest=False).indices
        picked.scatter_(1, idx, True)
        picked &= noise < 2.0
    return (answer | picked).nonzero(as_tuple=True)


def loss_fn(
    model: GPT2LMHeadModel, tokens: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Full-vocabulary cross-entropy at ``where`` (hidden states gathered before unembedding)."""
    inputs = tokens.clamp(min=0)
    hidden = model.transformer(input_ids=inputs).last_hidden_state  # [batch, pos, d_model]
    b, p = where
    h = hidden[b, p]  # [k, d_model]
    logits = model.lm_head(h)  # [k, vocab]
    return F.cross_entropy(logits.float(), tokens[b, p + 1])


def _param_groups(model: GPT2LMHeadModel, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "wte" not in name and "wpe" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# ---- evaluation --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _discovery_batch() -> TaskBatch:
    return build_dataset(load_task("greater_than"), gpt2_tokenizer(), "discovery", "hanna")


@torch.no_grad()
def evaluate_toy_module(model: GPT2LMHeadModel, n: int | None = None) -> dict[str, float]:
    """PD, CS, corrupted PD on the discovery set (first ``n`` examples), Hanna's template."""
    model.eval()
    batch = _discovery_batch()
    if n is not None:
        batch = batch.subset(list(range(min(n, len(batch)))))
    out: dict[str, float] = {}
    for prefix, toks in (("", batch.clean), ("corrupted_", batch.corrupted)):
        hidden = model.transformer(input_ids=toks).last_hidden_state  # [n, pos, d_model]
        logits = model.lm_head(hidden[:, batch.end_pos]).float()  # [n, vocab]
        m = task_metrics(logits, batch, prefix=prefix)
        for key in ("prob_diff", "cutoff_sharpness", "logit_diff", "answer_mass"):
            out[prefix + key] = round(m[prefix + key], 4)
    return out


# ---- checkpoints -------------------------------------------------------------------------------


def _save_checkpoint(
    ckpt: Path,
    model: GPT2LMHeadModel,
    opt: torch.optim.AdamW,
    step: int,
    seconds: float,
    cfg: ToyTrainConfig,
    history: list[dict[str, float]],
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            tensors[f"opt.{i}.exp_avg"] = st["exp_avg"]
            tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"]
            tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    save_tensors(ckpt / "state.safetensors", tensors)
    progress = {"step": step, "seconds": seconds, "config": asdict(cfg), "history": history}
    write_json(ckpt / "progress.json", progress)


def _load_checkpoint(
    ckpt: Path, model: GPT2LMHeadModel, opt: torch.optim.AdamW, cfg: ToyTrainConfig
) -> tuple[int, float, list[dict[str, float]]]:
    """Restore model and optimizer; returns (next step, seconds so far, eval history)."""
    progress = ckpt / "progress.json"
    if not progress.is_file() or not (ckpt / "state.safetensors").is_file():
        return 0, 0.0, []
    info = read_json(progress)
    saved = info.get("config", {})
    if {k: v for k, v in saved.items() if k != "betas"} != {
        k: v for k, v in asdict(cfg).items() if k != "betas"
    }:
        raise UserError(
            f"the checkpoint in {ckpt} was written with other settings; delete it or "
            f"train with the same settings."
        )
    tensors = load_tensors(ckpt / "state.safetensors")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=False)
    model.tie_weights()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"opt.{i}.step"].reshape(()).clone(),
                "exp_avg": tensors[f"opt.{i}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].clone(),
            }
    return int(info["step"]), float(info["seconds"]), list(info.get("history", []))


# ---- training ----------------------------------------------------------------------------------


def _batch_indices(step: int, cfg: ToyTrainConfig) -> torch.Tensor:
    """Document indices of ``step``: a seeded permutation per epoch, sliced."""
    per_epoch = cfg.n_documents // cfg.batch_size
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(cfg.n_documents, generator=gen)
    return perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]


def train_toy(
    cfg: ToyTrainConfig, out_dir: Path = TOY_DIR, keep_checkpoint: bool = False
) -> dict[str, Any]:
    """Train the toy; write ``toy.safetensors`` and ``config.json`` into ``out_dir``."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    torch.manual_seed(cfg.seed)
    tok = gpt2_tokenizer()
    log.info("generating %d corpus documents (seed %d)", cfg.n_documents, cfg.corpus_seed)
    tokens = tokenize_corpus(generate_corpus(cfg.n_documents, cfg.corpus_seed), tok)
    centuries = century_token_ids(tok)
    model = build_toy_module(TRAIN_ARCH, seed=cfg.seed)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    start, spent, history = _load_checkpoint(ckpt, model, opt, cfg)
    if start:
        log.info("resuming toy training at step %d", start)
    t0 = time.perf_counter() - spent
    bar = tqdm(range(start, cfg.steps), desc="toy", initial=start, total=cfg.steps)
    running = float("nan")
    for step in bar:
        batch = tokens[_batch_indices(step, cfg)]
        batch = batch[:, : int((batch >= 0).sum(1).max())]  # drop all-padding columns
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        where = loss_positions(batch, centuries, cfg.sample_positions, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_fn(model, batch, where)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            m = evaluate_toy_module(model, n=min(196, cfg.final_eval_examples))
            model.train()
            history.append({"step": done, "loss": round(running, 4), **m})
            log.info("step %d loss %.3f %s", done, running, m)
        last = done == cfg.steps
        if (done % cfg.checkpoint_every == 0 and not last) or (last and keep_checkpoint):
            _save_checkpoint(ckpt, model, opt, done, time.perf_counter() - t0, cfg, history)
    seconds = time.perf_counter() - t0
    model.eval()
    state = {
        k: v.half() if k == "transformer.wte.weight" else v.float()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    save_tensors(out_dir / "toy.safetensors", state, metadata={"format": "pt"})
    # scored as shipped: the saved weights back in float32 (what ``load_toy`` will see)
    shipped = load_toy_module(out_dir / "toy.safetensors", arch=TRAIN_ARCH)
    final = evaluate_toy_module(shipped, cfg.final_eval_examples)
    info = {
        "arch": TRAIN_ARCH,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1),
        "train_config": asdict(cfg),
        "corpus": {**corpus_settings(), "n_documents": cfg.n_documents, "seed": cfg.corpus_seed},
        "loss": "full-vocabulary cross-entropy at year-suffix positions + random positions",
        "history": history,
        "final_metrics": {"dataset": "discovery", "template": "hanna", **final},
        **run_metadata(seeds={"train": cfg.seed, "corpus": cfg.corpus_seed}),
    }
    write_json(out_dir / "config.json", info)
    if not keep_checkpoint and ckpt.is_dir():
        shutil.rmtree(ckpt)
    return info


def load_trained(out_dir: Path = TOY_DIR) -> GPT2LMHeadModel:
    """The toy written by ``train_toy`` into ``out_dir`` (arch from its config.json)."""
    out_dir = Path(out_dir)
    weights = out_dir / "toy.safetensors"
    if not weights.is_file():
        raise UserError(f"no toy weights in {out_dir}; run `clt-bench toy-model train`.")
    cfg_path = out_dir / "config.json"
    arch = read_json(cfg_path)["arch"] if cfg_path.is_file() else None
    return load_toy_module(weights, arch=arch or TRAIN_ARCH)
