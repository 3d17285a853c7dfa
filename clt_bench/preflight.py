"""Pre-flight: peak memory and time per stage, estimated before any stage runs.

``clt-bench run`` loads the model and measures a short calibration on it (one extraction
forward, one task forward with logits, training steps of two narrow transcoders; a few seconds),
then scales it to the config's sizes (``estimate``): host memory = the resident memory with the
model loaded + the largest stage's own peak (with the PLT in a second process, that process too);
GPU memory the same from ``torch.cuda.max_memory_allocated``; time from the measured seconds per
row, token and token x feature. Time is a rough guide (within ~2x); memory is tested within 30 %
of measured peaks (tests/test_preflight.py). A run whose peak exceeds the machine's memory (RAM
or the container's cgroup limit; the GPU's) is refused with one sentence and exit code 2 unless
``--yes``. Peaks are measured through Linux's resettable high-water mark
(``/proc/self/clear_refs``); elsewhere fixed coefficients stand in.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clt_bench.config import CLTConfig, RunConfig
from clt_bench.errors import UserError
from clt_bench.models.sources import LoadedModel

if TYPE_CHECKING:
    from clt_bench.activations.tokens import TokenRows

GB = 1e9
TASK_TOKENS = 16  # a task prompt's length in tokens (BOS + 14-15 words)
# fallback coefficients (measured on a 2-core x86 CPU, torch 2.13, GPT-2 small and the toy)
DEFAULT_FWD_BYTES_PER_TOKEN_PER_LAYER = 0.08e6  # per d_model 768; scaled by d_model
DEFAULT_STEP_BYTES = 35.0  # CLT step activations, bytes per token x feature x layer
DEFAULT_STEP_TOKEN_BYTES_PER_PAIR = 8.0  # per token x layer pair x d_model


@dataclass
class Calibration:
    """Measured on the loaded model (or the fallback coefficients, ``measured=False``)."""

    base_bytes: float  # host RSS (or GPU memory allocated) with the model loaded
    fwd_bytes_per_row: float  # activation extraction: peak bytes per row of seq_len tokens
    fwd_seconds_per_row: float
    task_bytes_per_row: float  # a full forward with logits: peak bytes per task prompt
    task_seconds_per_row: float
    step_bytes_per_tfl: float  # CLT step activations per token x feature x layer
    step_bytes_per_token: float  # CLT step activations per token that do not grow with width
    step_seconds_per_tfl: float  # CLT step time per token x feature x (encoder+decoder) layer
    measured: bool = True
    seconds: float = 0.0  # how long the calibration took


@dataclass
class Estimate:
    """Peaks in bytes and seconds per stage for one config and stage list."""

    host_bytes: float
    gpu_bytes: float | None
    stage_host_bytes: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    parallel_plt: bool = False
    calibration: Calibration | None = None

    def table(self) -> str:
        lines = [
            "pre-flight estimate"
            + ("" if self.calibration and self.calibration.measured else " (not calibrated)")
            + f": peak host memory {self.host_bytes / GB:.1f} GB"
            + ("" if self.gpu_bytes is None else f", GPU memory {self.gpu_bytes / GB:.1f} GB")
            + (", PLT in a second process" if self.parallel_plt else "")
        ]
        total = 0.0
        for stage, sec in self.stage_seconds.items():
            total += sec
            mem = self.stage_host_bytes.get(stage, 0.0) / GB
            lines.append(f"  {stage:<12} ~{_duration(sec):>8}   stage peak +{mem:.2f} GB")
        lines.append(f"  {'total':<12} ~{_duration(total):>8}   (time: a rough guide, +-2x)")
        return "\n".join(lines)


def _duration(sec: float) -> str:
    if sec < 90:
        return f"{sec:.0f} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    if sec < 3 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} d"


# ----- measuring ------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> float:
    """This process's resident memory now (Linux; elsewhere the peak so far)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure_peak(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(peak bytes above the memory in use before ``fn``, seconds) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before: float = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, time.perf_counter() - t0
    _trim()  # freed memory back to the system: ``fn`` allocates on fresh pages
    if not _reset_peak():
        raise OSError("no resettable high-water mark")
    before = rss_bytes()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return (_status_kb("VmHWM") or 0) * 1024.0 - before, seconds


def _rows(loaded: LoadedModel, n: int, width: int) -> TokenRows:
    from clt_bench.activations.tokens import TokenRows

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, int(loaded.bridge.cfg.d_vocab), (n, width), generator=g)
    return TokenRows(tokens=tokens, mask=torch.ones(n, width, dtype=torch.bool))


def calibrate(cfg: RunConfig, loaded: LoadedModel, stages: list[str] | None = None) -> Calibration:
    """Measure the coefficients on ``loaded`` (a few seconds; see the module docstring); the
    extraction and CLT-step measurements only where ``stages`` (default: all) need them."""
    from clt_bench.activations.extract import extract_activations
    from clt_bench.activations.stage import store_dtype

    t_start = time.perf_counter()
    device = loaded.device
    L, d = loaded.n_layers, loaded.d_model
    try:
        gpu = device.type == "cuda"
        base = float(torch.cuda.memory_allocated(device)) if gpu else rss_bytes()
        a = cfg.activations
        n_fwd = max(1, min(a.batch_size, 1024 // a.seq_len, 8))
        rows = _rows(loaded, n_fwd, a.seq_len)

        def extract() -> object:
            return extract_activations(loaded.bridge, rows, store_dtype(cfg), a.exclude_bos)

        # memory from the first call (fresh pages), time from a second (warm) one
        fwd_bytes, _ = measure_peak(extract, device)
        fwd_sec = measure_peak(extract, device)[1]
        n_task = 8
        task_rows = _rows(loaded, n_task, TASK_TOKENS).tokens.to(device)

        @torch.no_grad()
        def task() -> object:
            return loaded.bridge(task_rows).float().log_softmax(-1)

        task_bytes, _ = measure_peak(task, device)
        task_sec = measure_peak(task, device)[1]
        fallback = default_calibration(cfg, loaded)
        if stages is None or {"clt", "plt"} & set(stages):
            step_bytes, step_token, step_sec, tfl = _calibrate_step(cfg.clt, L, d, device)
        else:
            step_bytes, step_token = fallback.step_bytes_per_tfl, fallback.step_bytes_per_token
            step_sec, tfl = fallback.step_seconds_per_tfl, 1.0
    except OSError:
        return default_calibration(cfg, loaded)
    return Calibration(
        base_bytes=base,
        fwd_bytes_per_row=max(fwd_bytes, 0.0) / n_fwd,
        fwd_seconds_per_row=fwd_sec / n_fwd,
        task_bytes_per_row=max(task_bytes, 0.0) / n_task,
        task_seconds_per_row=task_sec / n_task,
        step_bytes_per_tfl=step_bytes,
        step_bytes_per_token=step_token,
        step_seconds_per_tfl=step_sec / tfl,
        seconds=time.perf_counter() - t_start,
    )


def _calibrate_step(
    c: CLTConfig, n_layers: int, d_model: int, device: torch.device
) -> tuple[float, float, float, float]:
    """Training steps of two narrow transcoders on random data: (activation bytes per token x
    feature x layer, bytes per token that do not grow with the width -- inputs, targets, one
    decoder output per layer pair --, seconds of the wider step, its token x feature x
    layer-pair count). Two widths separate the two terms."""
    n = min(c.micro_batch_tokens or c.batch_tokens, c.batch_tokens, 512)
    wide = min(c.n_features, 512)
    narrow = min(c.n_features, 128)
    peak_w, sec = _one_step(c, wide, n, n_layers, d_model, device)
    if narrow < wide:
        peak_n, _ = _one_step(c, narrow, n, n_layers, d_model, device)
        alpha = max(peak_w - peak_n, 0.0) / (n * (wide - narrow) * n_layers)
    else:
        alpha = DEFAULT_STEP_BYTES
    beta = max(peak_w - alpha * n * wide * n_layers, 0.0) / n
    pairs = n_layers + _decoder_pairs(c.kind, n_layers)
    return alpha, beta, sec, float(n * wide * pairs)


def _one_step(
    c: CLTConfig, width: int, n: int, n_layers: int, d_model: int, device: torch.device
) -> tuple[float, float]:
    """(peak bytes, seconds) of one training step of ``n`` tokens at ``width`` features, after a
    first step that allocates the gradients and AdamW state."""
    from dataclasses import replace

    from clt_bench.clt.losses import TrainObjective
    from clt_bench.clt.train import build_clt, precision_context

    clt = build_clt(replace(c, n_features=width), n_layers, d_model).to(device)
    clt.train()
    objective = TrainObjective(clt, c.lambda_p, c.tanh_c, fuse=c.fuse)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_layers, d_model, generator=g).to(device)
    y = torch.randn(n, n_layers, d_model, generator=g).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        with precision_context(c.precision, str(device)):
            loss, _, _ = objective(x, y, 1e-3)
        loss.backward()
        opt.step()

    step()
    return measure_peak(step, device)


def default_calibration(cfg: RunConfig, loaded: LoadedModel | None = None) -> Calibration:
    """Fixed coefficients (no measurement): for tests, and where peaks cannot be measured."""
    d = loaded.d_model if loaded is not None else 768
    L = loaded.n_layers if loaded is not None else 12
    fwd_row = DEFAULT_FWD_BYTES_PER_TOKEN_PER_LAYER * d / 768 * L * cfg.activations.seq_len
    return Calibration(
        base_bytes=rss_bytes(),
        fwd_bytes_per_row=fwd_row,
        fwd_seconds_per_row=2e-4 * L * cfg.activations.seq_len * d / 768,
        task_bytes_per_row=TASK_TOKENS * 50257 * 4 * 3.0,
        task_seconds_per_row=2e-3 * L / 12,
        step_bytes_per_tfl=DEFAULT_STEP_BYTES,
        step_bytes_per_token=DEFAULT_STEP_TOKEN_BYTES_PER_PAIR * L * (L + 1) / 2 * d,
        step_seconds_per_tfl=1e-8,
        measured=False,
    )


# ----- the estimate ---------------------------------------------------------------------------


def _decoder_pairs(kind: str, n_layers: int) -> int:
    return n_layers * (n_layers + 1) // 2 if kind == "clt" else n_layers


def transcoder_parameters(c: CLTConfig, n_layers: int, d_model: int) -> int:
    """Parameters of a CLT/PLT: encoders, decoders (every later layer for a CLT), biases."""
    F = c.n_features
    enc = n_layers * F * d_model + 2 * n_layers * F
    dec = F * d_model * _decoder_pairs(c.kind, n_layers) + n_layers * d_model
    skip = n_layers * d_model * d_model if c.skip else 0
    return enc + dec + skip


def _training(
    c: CLTConfig, cfg: RunConfig, cal: Calibration, L: int, d: int, act_bytes: float
) -> tuple[float, float]:
    """(peak bytes, seconds) of one transcoder's training stage beyond the base."""
    a = cfg.activations
    n_pass = min(c.micro_batch_tokens or c.batch_tokens, c.batch_tokens)
    params = transcoder_parameters(c, L, d)
    # fp32 weights, gradients and two AdamW moments (+ bf16 copies of the weights under autocast)
    state = (18.0 if c.precision == "bf16" else 16.0) * params
    step = (cal.step_bytes_per_tfl * c.n_features * L + cal.step_bytes_per_token) * n_pass
    if a.mode == "stream":  # one block of activations (its copy while the next is assembled)
        block = a.shuffle_buffer * act_bytes
        extract = cal.fwd_bytes_per_row * a.batch_size
    else:
        window = math.ceil(a.shuffle_buffer / a.shard_tokens) * a.shard_tokens
        block, extract = min(window, a.n_tokens) * act_bytes, 0.0
    # at the start (AdamW state not yet allocated): the normalisation batches and the first block
    norm = c.batch_tokens * L * 2 * d * 4.0 * (1 + max(1, c.norm_batches))
    start = 4.0 * params + 2 * block + norm
    # while training: a step, or the next block assembled beside the current one
    train = max(start, state + block + max(step, block + extract))
    # evaluation: every held-out token's activations in fp32 (whole batches of rows), the
    # transcoder on 2,048 of them at a time, and the replacement model's log-probabilities over
    # the vocabulary for 8 rows (original, replacement, zero-ablated: clt.evaluate)
    heldout = (a.eval_tokens + a.batch_size * a.seq_len) * L * 2 * d * 4.0
    recon = 2048 * L * c.n_features * 4.0 * 3
    agree = 8 * a.seq_len * cal.task_bytes_per_row / TASK_TOKENS * 3  # the three runs at once
    evaluate = 4.0 * transcoder_parameters(c, L, d) + heldout + max(recon, agree)
    peak = max(train, evaluate)
    pairs = L + _decoder_pairs(c.kind, L)
    seconds = c.n_steps * c.batch_tokens * c.n_features * pairs * cal.step_seconds_per_tfl
    if a.mode == "stream":
        epochs = max(1, math.ceil(c.n_steps * c.batch_tokens / a.n_tokens))
        seconds += epochs * a.n_tokens / a.seq_len * cal.fwd_seconds_per_row
    seconds += 3 * c.eval_tokens / TASK_TOKENS * cal.task_seconds_per_row  # evaluation
    return peak, seconds


def _input_stage_cost(
    stage: str, cfg: RunConfig, cal: Calibration, L: int, n_heads: int, act_bytes: float
) -> tuple[float, float]:
    """(peak bytes beyond the base, seconds) of the task, baseline or activations stage."""
    a, t, b = cfg.activations, cfg.task, cfg.baseline
    row_b, row_s = cal.task_bytes_per_row, cal.task_seconds_per_row
    if stage == "task":
        n_task = t.n or 490
        return row_b * min(t.batch_size, n_task), row_s * 2 * (n_task + 12 * t.family_n * 2)
    if stage == "baseline":
        # patched runs read the logits at END only: the model's activations of each row
        per_token = cal.fwd_bytes_per_row / a.seq_len
        mem = per_token * TASK_TOKENS * min(b.batch_size, 2 * b.n_examples)
        senders = L * (n_heads + 1)
        rows = 2 * (3 + b.n_random) * b.n_examples + b.neuron_candidates * b.neuron_examples
        if b.circuit == "discovered":
            rows += b.max_steps * senders * b.discovery_examples
        return mem, 0.08 * row_s * rows  # path patching reads END only (fitted on the toy)
    heldout = (a.eval_tokens + a.batch_size * a.seq_len) * act_bytes
    # a shard being written while the next one is computed and concatenated: three shards
    shard = 3.0 * min(a.shard_tokens, a.n_tokens) * act_bytes if a.mode == "cache" else 0.0
    tokens = a.eval_tokens + (a.n_tokens if a.mode == "cache" else 0)
    return (
        cal.fwd_bytes_per_row * a.batch_size + heldout + shard,
        tokens / a.seq_len * cal.fwd_seconds_per_row,
    )


def _stage_cost(
    stage: str, cfg: RunConfig, cal: Calibration, L: int, d: int, n_heads: int, act_bytes: float
) -> tuple[float, float]:
    """(peak bytes beyond the base, seconds) of one stage."""
    if stage in ("task", "baseline", "activations"):
        return _input_stage_cost(stage, cfg, cal, L, n_heads, act_bytes)
    g, f = cfg.graphs, cfg.features
    row_b, row_s = cal.task_bytes_per_row, cal.task_seconds_per_row
    clt_params = 4.0 * transcoder_parameters(cfg.clt, L, d)
    if stage == "clt":
        return _training(cfg.clt, cfg, cal, L, d, act_bytes)
    if stage == "plt":
        if not cfg.plt.enabled:
            return 0.0, 0.0
        peak, seconds = _training(cfg.plt, cfg, cal, L, d, act_bytes)
        # and its own graphs and features
        return peak, seconds + (_graph_seconds(cfg, row_s) + _feature_seconds(cfg, row_s))
    if stage == "graphs":
        return clt_params + row_b * g.batch_size, _graph_seconds(cfg, row_s)
    if stage == "features":
        return clt_params + row_b * f.prompts_per_pass * 2, _feature_seconds(cfg, row_s)
    if stage == "compare":
        plt_params = 4.0 * transcoder_parameters(cfg.plt, L, d) if cfg.plt.enabled else 0.0
        mem = clt_params + plt_params + row_b * f.prompts_per_pass * 2
        return mem, row_s * g.n_prompts * (2 * f.curve_candidates + 25)
    if stage == "stability":  # its seeds' sub-runs are not estimated
        return 0.0, 0.0
    return 0.0, 5.0  # report


def estimate(
    cfg: RunConfig,
    stages: list[str],
    cal: Calibration,
    n_layers: int,
    d_model: int,
    n_heads: int = 12,
    parallel_plt: bool = False,
) -> Estimate:
    """Peaks and times of ``stages`` for ``cfg`` from the calibration ``cal``."""
    from clt_bench.activations.stage import STORE_DTYPES

    act_bytes = n_layers * 2 * d_model * STORE_DTYPES[cfg.activations.dtype].itemsize  # a token's
    mem: dict[str, float] = {}
    sec: dict[str, float] = {}
    for stage in stages:
        mem[stage], sec[stage] = _stage_cost(stage, cfg, cal, n_layers, d_model, n_heads, act_bytes)
    # on the CPU, memory a stage frees is not always returned to the system (glibc keeps freed
    # blocks of up to 32 MB for reuse), so half of the second-largest stage's peak is added to
    # the largest; CUDA's caching allocator reuses its blocks
    cuda = str(cfg.model.device).startswith("cuda")
    peaks = sorted(mem.values(), reverse=True) + [0.0, 0.0]
    host = cal.base_bytes + peaks[0] + (0.0 if cuda else 0.5 * peaks[1])
    if parallel_plt and "plt" in mem and "clt" in mem:
        # the PLT's process (its own model and PLT) beside the CLT's training
        host = max(host, 2 * cal.base_bytes + mem["clt"] + mem["plt"] + 0.5 * peaks[1])
    gpu = None
    if cuda:  # the stages' tensors live on the GPU
        gpu, host = host, rss_bytes()
    return Estimate(
        host_bytes=host,
        gpu_bytes=gpu,
        stage_host_bytes=mem,
        stage_seconds=sec,
        parallel_plt=parallel_plt,
        calibration=cal,
    )


def _graph_seconds(cfg: RunConfig, row_s: float) -> float:
    g = cfg.graphs
    per_graph = 8 + g.max_feature_nodes / 128  # in task-row forwards (fitted on the toy)
    return (g.n_prompts + g.share_prompts + 1) * per_graph * row_s


def _feature_seconds(cfg: RunConfig, row_s: float) -> float:
    f, g = cfg.features, cfg.graphs
    rows = f.top_k * (g.n_prompts + 2 * max(f.ablation_prompts, 1)) / max(f.prompts_per_pass, 1)
    rows += f.interaction_top**2 / 2 * 8 + f.family_features * 12 * 8
    return rows * row_s * 0.3


# ----- the machine ----------------------------------------------------------------------------


def host_memory() -> float:
    """The machine's memory in bytes: RAM, or the cgroup's limit where a container sets one."""
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, float(text))
    return total


def gpu_memory(device: str) -> float | None:
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(dev.index or 0).total_memory)


def check_fits(est: Estimate, device: str, force: bool = False) -> None:
    """UserError (one sentence) when the estimate exceeds the machine, unless ``force``."""
    if force:
        return
    host = host_memory()
    if est.host_bytes > host:
        raise UserError(
            f"this run needs an estimated {est.host_bytes / GB:.1f} GB of memory at its peak but "
            f"this machine has {host / GB:.1f} GB; lower the sizes (clt.n_features, "
            f"activations.shuffle_buffer, activations.batch_size), use --serial, or pass --yes to "
            f"run it anyway."
        )
    gpu = gpu_memory(device)
    if est.gpu_bytes is not None and gpu is not None and est.gpu_bytes > gpu:
        raise UserError(
            f"this run needs an estimated {est.gpu_bytes / GB:.1f} GB of GPU memory at its peak "
            f"but the GPU has {gpu / GB:.1f} GB; lower the sizes (clt.n_features, "
            f"clt.micro_batch_tokens, activations.shuffle_buffer) or pass --yes to run it anyway."
        )


def preflight(
    cfg: RunConfig,
    stages: list[str],
    loaded: LoadedModel,
    parallel_plt: bool,
    measure: bool = True,
) -> Estimate:
    """Calibrate on ``loaded`` (``measure``) and estimate ``stages`` of ``cfg``."""
    cal = calibrate(cfg, loaded, stages) if measure else default_calibration(cfg, loaded)
    return estimate(
        cfg,
        stages,
        cal,
        loaded.n_layers,
        loaded.d_model,
        int(loaded.bridge.cfg.n_heads),
        parallel_plt=parallel_plt,
    )


MODES = ("measure", "estimate", "off")


def run_preflight(
    cfg: RunConfig,
    run_dir: str | Path,
    stages: list[str] | None,
    resume: bool = True,
    overlap: bool = False,
    force: bool = False,
    mode: str | None = None,
    progress: Callable[[str], None] = print,
) -> LoadedModel | None:
    """``clt-bench run``'s pre-flight: print the estimate of the stages still to run and refuse
    (UserError) a run that does not fit, unless ``force``. Returns the loaded model (the pipeline
    reuses it), or None when nothing is to run or the pre-flight is off.

    ``mode`` (default: ``$CLT_BENCH_PREFLIGHT`` or ``measure``): ``measure`` calibrates on the
    model (seconds), ``estimate`` uses fixed coefficients, ``off`` skips the pre-flight.
    """
    from clt_bench.models import load_model
    from clt_bench.pipeline import stage_is_current, stage_table
    from clt_bench.plt_worker import can_overlap
    from clt_bench.run_context import RunContext

    mode = mode or os.environ.get("CLT_BENCH_PREFLIGHT", "measure")
    if mode not in MODES:
        raise UserError(f"CLT_BENCH_PREFLIGHT must be one of {', '.join(MODES)} (got {mode!r}).")
    if mode == "off":
        return None
    table = stage_table()
    names = stages or list(table)
    ctx = RunContext(cfg=cfg, run_dir=Path(run_dir))
    todo = [s for s in names if s in table and not (resume and stage_is_current(ctx, s))]
    if not todo:
        return None
    m = cfg.model
    loaded = load_model(m.name, m.device, m.dtype, m.seed)
    parallel = overlap and can_overlap(cfg, names) and "plt" in todo
    est = preflight(cfg, todo, loaded, parallel_plt=parallel, measure=mode == "measure")
    progress(est.table())
    check_fits(est, m.device, force=force)
    return loaded
