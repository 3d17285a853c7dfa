"""The CLT training loop: AdamW, LR warm-up + linear decay, gradient clipping, lambda_S ramp,
atomic checkpoints with exact resume, NaN/inf guard, tqdm progress and a JSONL metrics log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clt_bench import threads
from clt_bench.activations.store import CachedBlocks, DataPosition, StreamBlocks, iter_batches
from clt_bench.clt import distributed as D
from clt_bench.clt.checkpoint import load_checkpoint, read_meta, restore_optimizer, save_checkpoint
from clt_bench.clt.init import estimate_scales, initialise
from clt_bench.clt.losses import STAT_NAMES, TrainObjective
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.config import CLTConfig, RunConfig
from clt_bench.errors import UserError
from clt_bench.io import write_text

log = logging.getLogger(__name__)
KINDS = ("clt", "plt")  # the choices of clt.kind
# BatchTopK's inference threshold: running mean of each layer's batch-wide k*B-th largest value
# with this decay (about the last 100 steps); see CrossLayerTranscoder.activate
BATCHTOPK_EMA = 0.99
INIT_TOKENS = 8192  # tokens the data-dependent initialisation reads
# training-time dead fraction: features that never fired over this last fraction of the steps
LATE_FRACTION = 0.1


@dataclass
class TrainResult:
    clt: CrossLayerTranscoder  # unwrapped, normalisation not yet folded
    steps: int
    tokens: int  # global tokens trained on
    seconds: float  # training wall time (all sessions of a resumed run together)
    fired: torch.Tensor  # [L, F] how often each feature fired in the last LATE_FRACTION of steps
    log_path: Path
    fired_tokens: int = 0  # global tokens ``fired`` was counted over


def build_clt(c: CLTConfig, n_layers: int, d_model: int) -> CrossLayerTranscoder:
    try:
        spec = CLTSpec(
            n_layers,
            d_model,
            c.n_features,
            c.activation,
            c.k,
            cross_layer=c.kind == "clt",
            skip=c.skip,
            bandwidth=c.bandwidth,
            decoder=c.decoder,
        )
        return CrossLayerTranscoder(spec)
    except ValueError as err:
        raise UserError(f"bad CLT config: {err}.") from err


def lr_factor(step: int, c: CLTConfig) -> float:
    """Linear warm-up over ``warmup_steps``, constant, linear decay to 0 after ``decay_start``."""
    if c.warmup_steps > 0 and step < c.warmup_steps:
        return (step + 1) / c.warmup_steps
    start = int(c.decay_start * c.n_steps)
    if step >= start and c.n_steps > start:
        return max(0.0, (c.n_steps - step) / (c.n_steps - start))
    return 1.0


def lambda_s_at(step: int, c: CLTConfig) -> float:
    """lambda_S ramps linearly from 0 to ``lambda_s`` over ``sparsity_ramp * n_steps`` steps."""
    ramp = c.sparsity_ramp * c.n_steps
    return c.lambda_s if ramp <= 0 else c.lambda_s * min(1.0, step / ramp)


@contextlib.contextmanager
def precision_context(precision: str, device: str) -> Iterator[None]:
    """The arithmetic of the training forward for ``clt.precision`` (see CLTConfig).

    bf16 autocasts the matmuls; weights stay fp32 (AdamW updates fp32 master weights) and the
    loss, its per-layer MSE and the statistics come out in fp32 (the fp32 decoder bias promotes
    every sum). tf32 allows TF32 matmuls on CUDA (CPUs have no TF32: same as fp32 there).
    """
    kind = torch.device(device).type
    if precision == "bf16":
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and kind == "cuda":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
    else:
        yield


@torch.no_grad()
def update_batchtopk_threshold(
    clt: CrossLayerTranscoder, kth: torch.Tensor, first: bool, info: D.DistInfo
) -> None:
    """Fold this step's [L] batch-wide k*B-th values into the running threshold (log_threshold)."""
    kth = D.all_reduce_mean(kth.to(clt.b_dec.device), info).clamp_min(1e-30)
    if not first:
        old = D.full(clt.log_threshold).exp()[:, 0].to(kth.device)
        kth = BATCHTOPK_EMA * old + (1 - BATCHTOPK_EMA) * kth
    value = kth.log()[:, None].expand(clt.n_layers, clt.spec.n_features).contiguous()
    clt.log_threshold.copy_(D.like(clt.log_threshold, value))


def train_key(cfg: RunConfig) -> str:
    """Hash of everything that changes the trained weights (not eval-only knobs)."""
    skip = {"threads": 0, "checkpoint_every": 0, "log_every": 0, "eval_tokens": 0, "load": ""}
    c = cfg.clt.__dict__ | skip
    return cfg.section_hash("activations", "model") + ":" + json.dumps(c, sort_keys=True)


def _initial_state(
    clt: CrossLayerTranscoder, source: CachedBlocks | StreamBlocks, c: CLTConfig, data_seed: int
) -> None:
    """Normalisation scalars and init from the first global batches (identical on all ranks)."""
    it = iter_batches(source, c.batch_tokens, data_seed)
    xs, ys = [], []
    for _ in range(max(1, c.norm_batches)):
        x, y, _pos = next(it)
        xs.append(x)
        ys.append(y)
    s_in, s_out = estimate_scales(xs, ys)
    clt.input_scale.copy_(s_in)
    clt.output_scale.copy_(s_out)
    # the bias quantiles and b_dec from at most INIT_TOKENS tokens (the 5 % quantile's rate is
    # then within +-0.25 %); the norm batches of the gpt2 preset hold 32,768
    x, y = torch.cat(xs)[:INIT_TOKENS], torch.cat(ys)[:INIT_TOKENS]
    initialise(clt, x, y, c.seed, c.threshold_init, c.init_rate, c.dec_init_scale)


def micro_batches(n: int, micro_tokens: int) -> list[tuple[int, int]]:
    """(start, end) token ranges of the passes of one step (``micro_tokens`` 0: one pass)."""
    size = n if micro_tokens <= 0 else min(micro_tokens, n)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _sync_context(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """No gradient all-reduce on the passes before a step's last one (DDP / FSDP2)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 fully_shard
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def forward_backward(
    model: torch.nn.Module,
    clt: CrossLayerTranscoder,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    c: CLTConfig,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One step's forward and backward, in ``c.micro_batch_tokens`` passes; gradients accumulate
    into ``.grad`` (zeroed by the caller).

    x, y [n, L, d] -> (stats [len(STAT_NAMES)], fired [L, F], BatchTopK cut [L] or None). The loss
    is a mean over tokens, so the pass of m tokens back-propagates loss * m / n and the
    accumulated gradient is the whole batch's (to float summation order). ``stats`` are the
    token-weighted means of the passes' (``nmse``'s per-layer variance is then per pass).
    """
    n = x.shape[0]
    parts = micro_batches(n, c.micro_batch_tokens)
    stats = fired = None
    kths = []
    for i, (a, b) in enumerate(parts):
        with _sync_context(model, i == len(parts) - 1):
            with precision_context(c.precision, device):
                loss, st, fi = model(x[a:b], y[a:b], lam)
            w = (b - a) / n
            (loss * w if len(parts) > 1 else loss).backward()
        stats = st * w if stats is None else stats + st * w
        fired = fi if fired is None else fired + fi
        kth = clt.pop_batch_kth()
        if kth is not None:
            kths.append(kth)
    assert stats is not None and fired is not None
    kth_mean = torch.stack(kths).mean(0) if kths else None
    return stats, fired, kth_mean


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    keep = [r for r in rows if json.loads(r)["step"] <= step]
    write_text(path, "".join(r + "\n" for r in keep))


def train_clt(
    cfg: RunConfig,
    source: CachedBlocks | StreamBlocks,
    n_layers: int,
    d_model: int,
    stage_dir: Path,
    device: str = "cpu",
    info: D.DistInfo | None = None,
    stop_after: int | None = None,
    loaded_at: float | None = None,
) -> TrainResult:
    """Train (or resume) a CLT; ``stop_after`` ends early after that many steps (for tests).

    ``loaded_at`` (``time.perf_counter()`` when the model finished loading) enables the start-up
    log line "first training step begins ... s after the model was loaded".
    """
    # clt.threads > 0 pins the training loop's CPU threads, else the process's budget; the
    # stages after it run at the budget again (clt_bench.threads)
    with threads.training(cfg.clt.threads):
        return _train_clt(
            cfg, source, n_layers, d_model, stage_dir, device, info, stop_after, loaded_at
        )


def _start(
    clt: CrossLayerTranscoder,
    source: CachedBlocks | StreamBlocks,
    cfg: RunConfig,
    ckpt: Path,
    key: str,
    log_path: Path,
    info: D.DistInfo,
) -> tuple[int, DataPosition, float, dict[str, torch.Tensor] | None, torch.Tensor]:
    """Where training starts: the checkpoint of an interrupted run with the same ``key`` (step,
    data position, seconds so far, its tensors, firing counts), else step 0 after the
    data-dependent initialisation (and an empty log)."""
    c = cfg.clt
    step, pos, seconds, tensors = 0, DataPosition(), 0.0, None
    fired = torch.zeros(clt.n_layers, c.n_features, dtype=torch.long)
    if ckpt.is_file() and read_meta(ckpt).get("key") == key:
        tensors, meta = load_checkpoint(ckpt, clt)
        step, pos, seconds = meta["step"], DataPosition(**meta["position"]), meta["seconds"]
        fired = tensors["fired"].clone()
        log.info("resuming CLT training from step %d (%s)", step, ckpt)
    else:
        t_init = time.perf_counter()
        _initial_state(clt, source, c, cfg.activations.seed)
        log.info("CLT initialised from data in %.1f s", time.perf_counter() - t_init)
        if info.is_main:
            write_text(log_path, "")
    if info.is_main:
        _truncate_log(log_path, step)
    return step, pos, seconds, tensors, fired


def _log_row(
    log_path: Path,
    c: CLTConfig,
    step: int,
    lam: float,
    grad_norm: torch.Tensor,
    stats: torch.Tensor,
    t_start: float,
) -> dict[str, Any]:
    """Append one row of the JSONL training log (after ``step`` steps); returns it."""
    row: dict[str, Any] = {
        "step": step,
        "tokens": step * c.batch_tokens,
        "lr": c.lr * lr_factor(step - 1, c),
        "lambda_s": lam,
        "grad_norm": float(D.full(grad_norm)),
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    row.update({k: float(v) for k, v in zip(STAT_NAMES, stats.tolist(), strict=True)})
    with log_path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _plain_clt(
    model: torch.nn.Module,
    clt: CrossLayerTranscoder,
    c: CLTConfig,
    info: D.DistInfo,
    n_layers: int,
    d_model: int,
    device: str,
) -> CrossLayerTranscoder:
    """The trained CLT as a plain module (FSDP2: its full weights gathered into a new one)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or not info.enabled:
        return clt
    out = build_clt(c, n_layers, d_model)
    out.load_state_dict({k: D.full(v).detach().cpu() for k, v in clt.state_dict().items()})
    return out.to(device)


def _train_clt(
    cfg: RunConfig,
    source: CachedBlocks | StreamBlocks,
    n_layers: int,
    d_model: int,
    stage_dir: Path,
    device: str,
    info: D.DistInfo | None,
    stop_after: int | None,
    loaded_at: float | None,
) -> TrainResult:
    c = cfg.clt
    info = info or D.DistInfo()
    torch.manual_seed(c.seed)
    data_seed = cfg.activations.seed
    # built on the training device: the data-dependent init then runs there too (on the CPU it
    # took most of the ~100 s start-up at the gpt2 preset's shape)
    clt = build_clt(c, n_layers, d_model).to(device)
    ckpt = stage_dir / "checkpoint.safetensors"
    log_path = stage_dir / "train_log.jsonl"
    key = train_key(cfg)
    step, pos, seconds, tensors, fired = _start(clt, source, cfg, ckpt, key, log_path, info)
    clt.train()
    late_start = c.n_steps - max(1, math.ceil(LATE_FRACTION * c.n_steps))
    objective = TrainObjective(clt, c.lambda_p, c.tanh_c, fuse=c.fuse)
    model = D.wrap(objective, c.parallel, info, device)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one pass per parameter, no parameter-sized temporaries (2x faster on CPU)
    opt = torch.optim.AdamW(
        params, lr=c.lr, betas=(0.9, 0.999), weight_decay=0.0, fused=not info.enabled or None
    )
    if tensors is not None:
        restore_optimizer(opt, tensors)
    fired = fired.to(device)
    batches = iter_batches(source, c.batch_tokens, data_seed, pos, info.rank, info.world)
    end = c.n_steps if stop_after is None else min(c.n_steps, step + stop_after)
    bar = tqdm(
        total=c.n_steps, initial=step, desc="train CLT", unit="step", disable=not info.is_main
    )
    t_start = time.perf_counter() - seconds
    started = False
    while step < end:
        x, y, pos = next(batches)
        if not started:
            started = True
            if loaded_at is not None:
                log.info(
                    "first training step begins %.1f s after the model was loaded",
                    time.perf_counter() - loaded_at,
                )
        for g in opt.param_groups:
            g["lr"] = c.lr * lr_factor(step, c)
        lam = lambda_s_at(step, c)
        if step == late_start:
            fired.zero_()  # count firing over the last LATE_FRACTION of training only
        opt.zero_grad(set_to_none=True)
        stats, fired_b, kth = forward_backward(
            model, clt, x.to(device), y.to(device), lam, c, device
        )
        if kth is not None:
            update_batchtopk_threshold(clt, kth, step == 0, info)
        stats = D.all_reduce_mean(stats, info)
        if not bool(torch.isfinite(stats).all()):  # after the all-reduce: every rank stops
            raise UserError(
                f"CLT training diverged at step {step}: the loss is "
                f"{float(stats[0])} (not finite); lower clt.lr or check the "
                f"activations for inf/NaN."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
        fired += D.all_reduce_sum(fired_b, info)
        step += 1
        bar.update(1)
        if info.is_main and (step % c.log_every == 0 or step == c.n_steps):
            row = _log_row(log_path, c, step, lam, grad_norm, stats, t_start)
            bar.set_postfix(nmse=f"{row['nmse']:.3f}", l0=f"{row['l0']:.1f}")
        if step % c.checkpoint_every == 0 or step == end:
            meta = {
                "key": key,
                "step": step,
                "position": pos.to_dict(),
                "seconds": time.perf_counter() - t_start,
            }
            save_checkpoint(ckpt, clt, opt, fired, meta, write=info.is_main)
            D.barrier(info)
    bar.close()
    seconds = time.perf_counter() - t_start
    out = _plain_clt(model, clt, c, info, n_layers, d_model, device)
    out.eval()
    late_tokens = max(0, step - late_start) * c.batch_tokens
    return TrainResult(
        out, step, step * c.batch_tokens, seconds, fired.cpu(), log_path, late_tokens
    )


def plot_curves(log_path: Path, png_path: Path) -> Path | None:
    """Loss, NMSE and L0 against step from the JSONL log."""
    from clt_bench.plots import plt, save_figure

    rows = [json.loads(r) for r in log_path.read_text().splitlines() if r.strip()]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, scale in zip(axes, ("loss", "nmse", "l0"), ("log", "log", "linear"), strict=True):
        vals = [r[key] for r in rows]
        ax.plot(steps, vals)
        if scale == "log" and all(v > 0 and math.isfinite(v) for v in vals):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key if key != "l0" else "L0 (features per token, all layers)")
    fig.tight_layout()
    return save_figure(fig, png_path)
