"""Train the planted model with strict interchange intervention training (``--model planted``).

Loss per step = behaviour + ``iit_weight`` * IIT + ``strict_weight`` * strictness (Gupta et al.
2024's SIIT on the high-level model of ``baselines/planted.toml``; docs/methods.md, "planted"):
the toy's corpus loss (``toy_train``); ``pair_batch // 2`` (base, source) pairs that each patch one
high-level variable from the source, targeting H's output for the source's YY; and as many that
each patch one non-circuit component (drawn by ``strict_sampling``), at one or all free positions
or, for ``joint_fraction`` of them, every non-circuit component at once, targeting H's output for
the base's YY. Both pair losses are cross-entropies against H's distribution over the 100 answer
tokens at END, computed in one patched forward pass (per-example masks, ``models.siit``).

The embeddings are copied from the shipped ``toy`` (the token embedding frozen); everything is
drawn from generators seeded by ``(seed, step)`` and checkpointed every ``checkpoint_every``
steps, so a killed run resumes to the same weights.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GPT2LMHeadModel

from clt_bench.errors import UserError
from clt_bench.io import load_tensors, run_metadata, save_tensors, write_json
from clt_bench.model_training.planted_eval import (
    circuit_only,
    complement_mask,
    corpus_loss,
    free_positions,
    interchange_accuracy,
    source_activations,
    strictness,
)
from clt_bench.model_training.planted_pairs import Pairs, hl_output, make_pairs, prompt_pool
from clt_bench.model_training.synthetic_corpus import corpus_settings, generate_corpus
from clt_bench.model_training.toy_train import (
    TRAIN_ARCH,
    _batch_indices,
    _load_checkpoint,
    _param_groups,
    _save_checkpoint,
    century_token_ids,
    evaluate_toy_module,
    loss_fn,
    loss_positions,
    lr_at,
    tokenize_corpus,
)
from clt_bench.models.planted import (
    PLANTED_DIR,
    PLANTED_WEIGHTS_NAME,
    PlantedSpec,
    load_planted_module,
    load_planted_spec,
)
from clt_bench.models.siit import PatchMask, all_components, patched
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.models.toy import TOY_WEIGHTS, build_toy_module, weights_fingerprint

log = logging.getLogger(__name__)

PLANTED_ARCH: dict[str, Any] = {**TRAIN_ARCH, "n_layer": 6}


@dataclass(frozen=True)
class PlantedTrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32  # corpus documents per step (behaviour loss)
    pair_batch: int = 64  # task pairs per step: half IIT, half strictness
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    iit_weight: float = 1.0
    strict_weight: float = 1.0
    all_positions_fraction: float = 0.5  # strictness examples patching a node everywhere at once
    # strictness examples patching every non-circuit node at once (the circuit alone must give
    # H(base): Hanna's component-level faithfulness, which single-node strictness does not imply)
    joint_fraction: float = 0.25
    corrupt_fraction: float = 0.25  # sources with YY = 01 (Hanna's counterfactual)
    corrupt_base_fraction: float = 0.5  # of those, pairs whose base is the 01 prompt
    n_documents: int = 32_000
    corpus_seed: int = 1_000  # the toy's corpus
    sample_positions: int = 2
    # strictness examples: each non-circuit component drawn uniformly ("uniform", InterpBench's
    # rule) or in proportion to its strictness at the last evaluation, floored at
    # ``strict_floor`` ("adaptive": the components the model still uses get the examples)
    strict_sampling: str = "adaptive"
    strict_floor: float = 0.02
    n_pair_prompts: int = 4_096
    pair_seed: int = 2_024  # training prompts; evaluation uses other seeds
    threads: int = (
        1  # fixed so a rerun gives the same weights (and no OpenMP stalls on a busy machine)
    )
    checkpoint_every: int = 250
    eval_every: int = 100

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.pair_batch < 2:
            raise UserError("planted training needs steps >= 1, batch_size >= 1, pair_batch >= 2.")
        if not (0 < self.lr < 1) or self.threads < 1 or self.checkpoint_every < 1:
            raise UserError("planted training needs 0 < lr < 1, threads >= 1, checkpoint >= 1.")
        if self.strict_sampling not in ("uniform", "adaptive") or self.strict_floor <= 0:
            raise UserError(
                "planted training's strict_sampling is 'uniform' or 'adaptive' and its "
                "strict_floor > 0."
            )


# held-out evaluation sets (other seeds than training's pair_seed)
EVAL_PAIR_SEED = 77
EVAL_PAIRS = 256
EVAL_CORPUS_SEED = 5_000
EVAL_CORPUS_DOCS = 512


def build_planted_module(seed: int, toy_weights: Path = TOY_WEIGHTS) -> GPT2LMHeadModel:
    """The planted architecture, seeded, with the toy's embeddings (token embedding frozen)."""
    model = build_toy_module(PLANTED_ARCH, seed=seed)
    toy = load_tensors(toy_weights)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(toy["transformer.wte.weight"].float())
        model.transformer.wpe.weight.copy_(toy["transformer.wpe.weight"].float())
    model.tie_weights()
    model.transformer.wte.weight.requires_grad_(False)
    return model


def strict_weights(cfg: PlantedTrainConfig, history: list[dict[str, Any]]) -> torch.Tensor | None:
    """Sampling weights of the strictness components (``all_components`` order), or None for
    uniform: with ``strict_sampling = "adaptive"``, each component's strictness (all free
    positions at once) at the last evaluation in ``history``, floored at ``strict_floor``
    (uniform while the model has no clean-corrupted PD gap to measure strictness against); the
    history is checkpointed, so a resumed run draws the same components."""
    if cfg.strict_sampling == "uniform" or not history:
        return None
    per = history[-1].get("strictness", {}).get("per_node", {})
    comps = all_components(PLANTED_ARCH["n_layer"], PLANTED_ARCH["n_head"])
    w = torch.tensor([float(per.get(f"{c.label}@all", 0.0)) for c in comps], dtype=torch.float64)
    if not bool(torch.isfinite(w).all()):  # no clean-corrupted gap yet: nothing to weigh by
        return None
    return w.clamp(min=cfg.strict_floor)


def pair_masks(
    pairs: Pairs,
    spec: PlantedSpec,
    n_iit: int,
    cfg: PlantedTrainConfig,
    gen: torch.Generator,
    weights: torch.Tensor | None = None,
) -> tuple[PatchMask, torch.Tensor]:
    """Masks for one step: the first ``n_iit`` rows IIT, the rest strictness (components drawn
    uniformly, or by ``weights``); and the target YY."""
    n, length = pairs.base.shape
    n_layers, n_heads = PLANTED_ARCH["n_layer"], PLANTED_ARCH["n_head"]
    mask = PatchMask(n, length, n_layers, n_heads)
    pos_of = {"YY": pairs.yy_pos, "END": pairs.end_pos}
    comps = all_components(n_layers, n_heads)
    target_yy = pairs.base_yy.clone()
    joint = None
    for i in range(n):
        if i < n_iit:
            var = spec.variables[int(torch.randint(len(spec.variables), (), generator=gen))]
            for comp in var.components:
                mask.set(i, comp, [pos_of[var.position]])
            target_yy[i] = pairs.source_yy[i]
            continue
        if cfg.joint_fraction > 0 and float(torch.rand((), generator=gen)) < cfg.joint_fraction:
            joint = complement_mask(spec, pairs, n_layers, n_heads) if joint is None else joint
            mask.heads[:, i] |= joint.heads[:, i]
            mask.mlps[:, i] |= joint.mlps[:, i]
            continue
        if weights is None:
            comp = comps[int(torch.randint(len(comps), (), generator=gen))]
        else:
            comp = comps[int(torch.multinomial(weights, 1, generator=gen))]
        free = free_positions(spec, pairs, comp)
        if not free:
            continue
        if float(torch.rand((), generator=gen)) < cfg.all_positions_fraction:
            mask.set(i, comp, free)
        else:
            mask.set(i, comp, [free[int(torch.randint(len(free), (), generator=gen))]])
    return mask, target_yy


def pair_loss(model: GPT2LMHeadModel, pairs: Pairs, mask: PatchMask, target_yy: torch.Tensor):
    """Per-example cross-entropy of the patched END output against H(XX, target YY): [n]."""
    src = source_activations(model, pairs.source)
    hidden = patched(model, pairs.base, src, mask)
    logp = F.log_softmax(model.lm_head(hidden[:, pairs.end_pos]).float(), -1)
    target = hl_output(pairs.century, target_yy)  # [n, 100]
    return -(target * logp[:, pairs.answer_ids]).sum(-1)


def evaluate_planted(
    model: GPT2LMHeadModel, spec: PlantedSpec, full: bool = False
) -> dict[str, Any]:
    """Task metrics, IIA per variable and strictness on held-out pairs (and corpus loss if full)."""
    pool = prompt_pool(EVAL_PAIRS, EVAL_PAIR_SEED)
    gen = torch.Generator().manual_seed(EVAL_PAIR_SEED)
    pairs = make_pairs(pool, torch.arange(len(pool)), gen, corrupt_fraction=0.0)
    few = make_pairs(pool, torch.arange(64), gen, corrupt_fraction=0.0)
    out: dict[str, Any] = {
        "task": evaluate_toy_module(model, n=None if full else 98),
        "interchange": interchange_accuracy(model, spec, pairs if full else few),
        "strictness": strictness(model, spec, pairs if full else few, True, single=full),
        "circuit_only": circuit_only(model, spec, pairs if full else few),
    }
    if full:
        tok = gpt2_tokenizer()
        held = tokenize_corpus(generate_corpus(EVAL_CORPUS_DOCS, EVAL_CORPUS_SEED), tok)
        out["corpus_loss"] = round(corpus_loss(model, held), 4)
    model.train()
    return out


def train_planted(
    cfg: PlantedTrainConfig,
    out_dir: Path = PLANTED_DIR,
    keep_checkpoint: bool = False,
    acceptance: bool = True,
) -> dict[str, Any]:
    """Train; write ``planted.safetensors`` and the model card ``config.json`` into ``out_dir``
    (``acceptance=False`` leaves the acceptance numbers out: tests of the training loop)."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    spec = load_planted_spec()
    tok = gpt2_tokenizer()
    tokens = tokenize_corpus(generate_corpus(cfg.n_documents, cfg.corpus_seed), tok)
    centuries = century_token_ids(tok)
    pool = prompt_pool(cfg.n_pair_prompts, cfg.pair_seed)
    model = build_planted_module(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    start, spent, history = _load_checkpoint(ckpt, model, opt, cfg)
    model.transformer.wte.weight.requires_grad_(False)
    if start:
        log.info("resuming planted training at step %d", start)
    t0 = time.perf_counter() - spent
    bar = tqdm(range(start, cfg.steps), desc="planted", initial=start, total=cfg.steps)
    running: dict[str, float] = {}
    n_iit = cfg.pair_batch // 2
    for step in bar:
        batch = tokens[_batch_indices(step, cfg)]  # type: ignore[arg-type]
        batch = batch[:, : int((batch >= 0).sum(1).max())]
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        where = loss_positions(batch, centuries, cfg.sample_positions, gen)
        idx = torch.randint(len(pool), (cfg.pair_batch,), generator=gen)
        pairs = make_pairs(pool, idx, gen, cfg.corrupt_fraction, cfg.corrupt_base_fraction)
        mask, target_yy = pair_masks(pairs, spec, n_iit, cfg, gen, strict_weights(cfg, history))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)  # type: ignore[arg-type]
        behaviour = loss_fn(model, batch, where)
        per_pair = pair_loss(model, pairs, mask, target_yy)
        iit, strict = per_pair[:n_iit].mean(), per_pair[n_iit:].mean()
        loss = behaviour + cfg.iit_weight * iit + cfg.strict_weight * strict
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
        )
        opt.step()
        for k, v in (("behaviour", behaviour), ("iit", iit), ("strict", strict)):
            x = float(v)
            running[k] = x if k not in running else 0.95 * running[k] + 0.05 * x
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            m = evaluate_planted(model, spec)
            history.append({"step": done, **{k: round(v, 4) for k, v in running.items()}, **m})
            log.info("step %d %s", done, history[-1])
        if done % cfg.checkpoint_every == 0 and done != cfg.steps:
            _save_checkpoint(ckpt, model, opt, done, time.perf_counter() - t0, cfg, history)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    model.eval()
    state = {
        k: v.half() if k == "transformer.wte.weight" else v.float()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {"arch": PLANTED_ARCH})  # so the reload reads the arch
    save_tensors(out_dir / PLANTED_WEIGHTS_NAME, state, metadata={"format": "pt"})
    shipped = load_planted_module(out_dir)
    info = {
        "arch": PLANTED_ARCH,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1),
        "train_config": asdict(cfg),
        "warm_start": {"embeddings_from": "toy", "toy_sha256_16": weights_fingerprint()},
        "corpus": {**corpus_settings(), "n_documents": cfg.n_documents, "seed": cfg.corpus_seed},
        "high_level_model": "baselines/planted.toml",
        "loss": "behaviour (toy's corpus loss) + IIT + strictness (SIIT), see planted_train.py",
        "history": history,
        "acceptance": acceptance_numbers(shipped, spec) if acceptance else None,
        **run_metadata(seeds={"train": cfg.seed, "corpus": cfg.corpus_seed}),
    }
    write_json(out_dir / "config.json", info)
    if not keep_checkpoint and ckpt.is_dir():
        shutil.rmtree(ckpt)
    return info


def acceptance_numbers(model: GPT2LMHeadModel, spec: PlantedSpec) -> dict[str, Any]:
    """The model card's acceptance block: everything ``evaluate_planted(full=True)`` measures,
    the toy's held-out corpus loss beside the planted one, and each bar with pass/fail."""
    from clt_bench.models.toy import load_toy_module

    m = evaluate_planted(model, spec, full=True)
    tok = gpt2_tokenizer()
    held = tokenize_corpus(generate_corpus(EVAL_CORPUS_DOCS, EVAL_CORPUS_SEED), tok)
    toy_loss = round(corpus_loss(load_toy_module(), held), 4)
    bars = spec.acceptance
    iia = min(v["accuracy"] for v in m["interchange"].values())
    checks = {
        "interchange_accuracy_min": iia >= bars["interchange_accuracy_min"],
        "strictness_mean_max": m["strictness"]["mean"] <= bars["strictness_mean_max"],
        "strictness_worst_max": m["strictness"]["worst"] <= bars["strictness_worst_max"],
        "prob_diff_min": m["task"]["prob_diff"] >= bars["prob_diff_min"],
        "corrupted_prob_diff_max": m["task"]["corrupted_prob_diff"]
        <= bars["corrupted_prob_diff_max"],
        "corpus_loss_ratio_max": m["corpus_loss"] / toy_loss <= bars["corpus_loss_ratio_max"],
    }
    return {
        **m,
        "toy_corpus_loss": toy_loss,
        "corpus_loss_ratio": round(m["corpus_loss"] / toy_loss, 4),
        "eval_pairs": {"n": EVAL_PAIRS, "seed": EVAL_PAIR_SEED},
        "passed": checks,
    }


__all__ = ["PlantedTrainConfig", "train_planted", "evaluate_planted", "acceptance_numbers"]
