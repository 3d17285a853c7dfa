"""Run configuration: frozen dataclasses from TOML presets plus ``key=value`` overrides.

Each pipeline stage owns one section dataclass below. Unknown keys are errors; values are
type-checked against the field's annotation (``Literal[...]`` fields accept only their choices),
and each section checks its ranges and names when it is built (``_checked``), so a bad value
raises ``UserError`` when the config loads, before any stage runs.
``RunConfig.section_hash(names)`` gives the hash that a stage records so that a changed config
recomputes it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from clt_bench.errors import UserError
from clt_bench.io import config_hash, read_json, to_jsonable
from clt_bench.paths import PACKAGE_DIR, published_circuit_names

PRESETS_DIR = PACKAGE_DIR / "presets"

INF = float("inf")


def _fail_range(key: str, value: Any, lo: float, hi: float, lo_open: bool, hi_open: bool) -> None:
    below = value < lo or (lo_open and value == lo)
    above = value > hi or (hi_open and value == hi)
    if not (below or above):
        return
    if hi == INF:
        rule = f"{'>' if lo_open else '>='} {lo:g}"
    elif lo == -INF:
        rule = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise UserError(f"config key '{key}' must be {rule} (got {value!r}).")


INT64 = (-(2**63), 2**63 - 1)


def _check_number(value: Any, key: str) -> None:
    """NaN passes every range comparison, and an integer beyond int64 overflows in torch or
    numpy deep inside a stage: both are refused when the config is built."""
    if isinstance(value, float) and math.isnan(value):
        raise UserError(f"config key '{key}' must be a number (got nan).")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not (INT64[0] <= value <= INT64[1])
    ):
        raise UserError(
            f"config key '{key}' must fit in 64 bits, between -2**63 and 2**63 - 1 (got {value})."
        )


def _parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """``"(0, 1]"`` -> (0, 1, lo_open=True, hi_open=False); ``inf`` allowed at either end."""
    lo, hi = (float(v) for v in text[1:-1].split(","))
    return lo, hi, text[0] == "(", text[-1] == ")"


def _check_choice(value: Any, tp: Any, key: str) -> None:
    choices = typing.get_args(tp)
    if value not in choices or type(value) is not type(choices[0]):
        raise UserError(
            f"config key '{key}' must be one of {', '.join(map(repr, choices))} (got {value!r})."
        )


def _checked(section: str, ranges: dict[str, str], extra: Any = None) -> Any:
    """Class decorator (inside ``@dataclass``): check ``Literal`` fields and numeric ranges.

    ``ranges`` maps a field to an interval such as ``"(0, inf)"`` or ``"[0, 1]"``; ``extra(obj)``
    runs further checks (names of tasks, circuits, files). Messages name the config key.
    """

    def post_init(self: Any) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_number(getattr(self, f.name), f"{section}.{f.name}")
            if typing.get_origin(hints[f.name]) is Literal:
                _check_choice(getattr(self, f.name), hints[f.name], f"{section}.{f.name}")
        for name, interval in ranges.items():
            _fail_range(f"{section}.{name}", getattr(self, name), *_parse_interval(interval))
        if extra is not None:
            extra(self)

    def wrap(cls: type) -> type:
        cls.__post_init__ = post_init  # type: ignore[attr-defined]
        cls.config_ranges = ranges  # type: ignore[attr-defined]  # read by tests/test_config.py
        return cls

    return wrap


def _check_model(m: ModelConfig) -> None:
    import torch

    if m.name not in ("toy", "planted", "gpt2", "gpt2-random") and not (
        m.name.startswith("hf:") and len(m.name) > 3
    ):
        raise UserError(
            f"unknown model '{m.name}' (known models: toy, planted, gpt2, gpt2-random, "
            f"hf:<name-or-path>)."
        )
    try:
        torch.device(m.device)
    except RuntimeError as err:
        raise UserError(f"config key 'model.device' is not a torch device ({m.device!r}).") from err


def _check_task(t: TaskConfig) -> None:
    from clt_bench.task.spec import load_task

    spec = load_task(t.task)  # unknown task, template or dataset: one sentence naming the choices
    spec.template(t.template or spec.default_template)
    spec.dataset(t.dataset)


def _check_baseline(b: BaselineConfig) -> None:
    if b.circuit == "discovered" or b.circuit in published_circuit_names():
        return
    if Path(b.circuit).suffix and not Path(b.circuit).is_file():
        raise UserError(f"circuit file {b.circuit} does not exist.")
    if not Path(b.circuit).is_file():
        raise UserError(
            f"unknown circuit '{b.circuit}' (known: discovered, "
            f"{', '.join(published_circuit_names())}, or a path to a circuit .json/.toml)."
        )


def _check_activations(a: ActivationsConfig) -> None:
    c = a.corpus
    if c in ("toy", "fineweb") or (c.startswith("hf:") and len(c) > 3):
        return
    if c.startswith("file:") and len(c) > 5:
        if not Path(c[5:]).expanduser().is_file():
            raise UserError(f"corpus file {c[5:]} does not exist.")
        return
    raise UserError(f"unknown corpus '{c}' (known: toy, fineweb, hf:<dataset>, file:<path>).")


def _check_clt(c: CLTConfig) -> None:
    if c.load and not Path(c.load).expanduser().is_dir():
        raise UserError(f"config key 'clt.load' names no directory ({c.load}).")


def _check_graphs(g: GraphsConfig) -> None:
    if not g.target.strip():
        raise UserError("config key 'graphs.target' must not be empty.")


@dataclass(frozen=True)
@_checked("model", {}, lambda m: _check_model(m))
class ModelConfig:
    name: str = "toy"  # toy | gpt2 | gpt2-random | hf:<name-or-path>
    device: str = "cpu"
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    seed: int = 0  # for gpt2-random weights


@dataclass(frozen=True)
@_checked(
    "task",
    {"n": "[0, inf)", "seed": "[-1, inf)", "batch_size": "[1, inf)", "family_n": "[0, inf)"},
    lambda t: _check_task(t),
)
class TaskConfig:
    task: str = "greater_than"  # a task name under tasks/, a task directory or a task.toml path
    template: str = ""  # "" = the task file's default_template
    dataset: str = (
        "discovery"  # discovery | headline (sizes and seeds live in tasks/<task>/task.toml)
    )
    n: int = 0  # 0 = the dataset's own size
    seed: int = -1  # -1 = the dataset's own seed
    batch_size: int = 128
    family_n: int = 48  # prompts per template/family in task/families.csv, evenly spread over
    # YY = 2..98 (97 = every YY once; 0 = skip the table)


@dataclass(frozen=True)
@_checked(
    "baseline",
    {
        "n_examples": "[1, inf)",
        "discovery_examples": "[1, inf)",
        "batch_size": "[1, inf)",
        "head_threshold": "[0, inf)",
        "mlp_threshold": "[0, inf)",
        "max_steps": "[0, inf)",
        "n_random": "[0, inf)",
        "top_neurons": "[1, inf)",
        "neuron_layer": "[-1, inf)",
        "neuron_candidates": "[1, inf)",
        "neuron_examples": "[1, inf)",
        "curve_dense": "[1, inf)",
    },
    lambda b: _check_baseline(b),
)
class BaselineConfig:
    circuit: str = "discovered"  # discovered | hanna2023 | acdc | eap_ig | path to a circuit JSON
    n_examples: int = 200  # examples of the task dataset used for circuit evaluation
    discovery_examples: int = 100  # the first of those used for the path-patching search
    batch_size: int = 1024  # rows (senders x examples) per patched forward pass
    # discovery: keep a sender whose corrupted paths lower PD by >= threshold x (clean - corrupted)
    head_threshold: float = 0.04
    mlp_threshold: float = 0.04
    max_steps: int = 4
    n_random: int = 10  # random circuits of the same size (seeds seed..seed + n_random - 1)
    seed: int = 0
    top_neurons: int = 10
    neuron_layer: int = -1  # -1 = the circuit's END MLP with the largest direct effect
    neuron_candidates: int = 32  # neurons whose direct effect is path-patched exactly
    neuron_examples: int = 100  # examples for the neuron analysis and units-needed curve
    curve_dense: int = 16  # units-needed curve: every k up to this, then steps of x1.25


@dataclass(frozen=True)
@_checked(
    "activations",
    {
        "n_tokens": "[1, inf)",
        "eval_tokens": "[1, inf)",
        "seq_len": "[2, inf)",
        "batch_size": "[1, inf)",
        "shard_tokens": "[1, inf)",
        "shuffle_buffer": "[1, inf)",
    },
    lambda a: _check_activations(a),
)
class ActivationsConfig:
    corpus: str = "toy"  # toy | fineweb | hf:<dataset> | file:<path to txt/json/jsonl/parquet>
    n_tokens: int = 400_000  # training tokens taken from the corpus (one epoch)
    eval_tokens: int = 16_384  # held-out tokens (after the training tokens) for quality metrics
    seq_len: int = 64  # one document per row, split into pieces of at most seq_len tokens
    batch_size: int = 32  # rows per model forward pass
    shard_tokens: int = 65_536
    seed: int = 1234  # corpus seed (toy: generator seed; others: shuffle of the block order)
    mode: Literal["cache", "stream"] = "cache"  # cache: shards on disk; stream: shuffle buffer
    shuffle_buffer: int = 65_536  # tokens per shuffled block (cache: rounded up to whole shards)
    text_field: str = "text"
    split: str = "train"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # cached activations' dtype
    # leave position 0 of every row out of training (and out of `nmse`/`l0`/`dead_fraction`):
    # GPT-2's position-0 residuals are outliers (hundreds of times the norm of other positions);
    # the replacement model then keeps the model's own MLP output at position 0
    exclude_bos: bool = False


@dataclass(frozen=True)
@_checked(
    "clt",
    {
        "n_features": "[1, inf)",
        "k": "[1, inf)",
        "lr": "(0, inf)",
        "batch_tokens": "[1, inf)",
        "n_steps": "[1, inf)",
        "warmup_steps": "[0, inf)",
        "decay_start": "[0, 1]",
        "grad_clip": "(0, inf)",
        "lambda_s": "[0, inf)",
        "sparsity_ramp": "[0, 1]",
        "lambda_p": "[0, inf)",
        "tanh_c": "(0, inf)",
        "threshold_init": "[0, inf)",
        "bandwidth": "(0, inf)",
        "init_rate": "(0, 1)",
        "dec_init_scale": "(0, inf)",
        "norm_batches": "[1, inf)",
        "checkpoint_every": "[1, inf)",
        "log_every": "[1, inf)",
        "eval_tokens": "[1, inf)",
        "threads": "[0, inf)",
        "micro_batch_tokens": "[0, inf)",
    },
    lambda c: _check_clt(c),
)
class CLTConfig:
    kind: Literal["clt", "plt"] = "clt"
    n_features: int = 1024  # per layer
    activation: Literal["jumprelu", "topk", "batchtopk", "relu"] = "jumprelu"
    k: int = 32  # for topk / batchtopk
    skip: bool = False
    lr: float = 1e-3
    batch_tokens: int = 1024  # global batch (all ranks together)
    n_steps: int = 2000
    warmup_steps: int = 100
    decay_start: float = 0.8  # fraction of n_steps after which the LR decays linearly to 0
    grad_clip: float = 1.0
    lambda_s: float = 1e-3  # tanh sparsity coefficient (final value of the linear ramp)
    sparsity_ramp: float = 1.0  # fraction of n_steps over which lambda_s ramps up from 0
    lambda_p: float = 3e-6  # pre-activation loss
    tanh_c: float = 4.0
    threshold_init: float = 0.03
    bandwidth: float = 0.01  # JumpReLU window (normalised units); keeps the backward sparse
    init_rate: float = 0.05  # target firing rate the encoder bias is initialised for
    dec_init_scale: float = 0.1  # decoder init: uniform +-dec_init_scale / sqrt(F * targets)
    norm_batches: int = 8  # batches used to estimate the normalisation scalars
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    eval_tokens: int = 8192  # held-out tokens for the replacement model (top-1, KL, CE)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 fully_shard, under torchrun
    threads: int = 0  # training CPU threads (0: this process's share of the cores, see threads.py)
    load: str = ""  # path to an existing circuit-tracer CLT/PLT directory (skip training)
    # training arithmetic: fp32 | tf32 (fp32 weights, TF32 matmuls on CUDA) | bf16 (autocast:
    # bf16 matmuls, fp32 master weights, loss and metrics); the saved CLT is fp32 either way
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    # dense | sparse | auto: decode (and back-propagate) over the entries that need a gradient
    decoder: Literal["dense", "sparse", "auto"] = "auto"
    # tokens per forward/backward pass (0: the whole batch in one): the step's gradient is
    # accumulated over ceil(batch_tokens / micro_batch_tokens) micro-batches, which bounds the
    # activation memory (the pre-activations and decoder gathers grow with the tokens per pass)
    # at the same step; BatchTopK's batch-wide cut is then taken per micro-batch
    micro_batch_tokens: int = 0
    # JumpReLU's dense-layer epilogue (activation, penalties, counts) as one function: auto
    # (compiled with torch.compile on CUDA; the composed ops on CPU) | compile | eager | off
    fuse: Literal["auto", "compile", "eager", "off"] = "auto"


@dataclass(frozen=True)
@_checked("plt", CLTConfig.config_ranges, lambda c: _check_clt(c))  # type: ignore[attr-defined]
class PLTConfig(CLTConfig):
    """Per-layer transcoders trained beside the CLT (the ``plt`` stage): the same fields as
    ``[clt]``, with their own values, and ``enabled`` (false skips the stage)."""

    kind: Literal["plt"] = "plt"
    enabled: bool = True


@dataclass(frozen=True)
@_checked(
    "graphs",
    {
        "node_threshold": "(0, 1]",
        "edge_threshold": "(0, 1]",
        "n_prompts": "[1, inf)",
        "max_feature_nodes": "[0, inf)",
        "batch_size": "[1, inf)",
        "logit_probability": "(0, 1]",
        "max_logits": "[1, inf)",
        "top_features": "[0, inf)",
        "share_prompts": "[0, inf)",
    },
    lambda g: _check_graphs(g),
)
class GraphsConfig:
    node_threshold: float = 0.8  # keep nodes up to this share of cumulative influence
    edge_threshold: float = 0.98  # keep edges up to this share of cumulative edge influence
    n_prompts: int = 97  # one per YY of the balanced set
    max_feature_nodes: int = 4096  # attribute at most this many active features (by influence)
    batch_size: int = 64  # rows (injected gradients) per batched backward pass
    # the graph prompt; empty: the task's own ([graph] of task.toml, else its default template's
    # example, BOS included: clt_bench.graphs.prompt)
    prompt: str = ""
    # task (the task's relation: gt / lt / exact) | greater-than | logits | answers | a token string
    target: str = "task"
    prepend_bos: bool = True  # text prompts start with BOS, as the task prompts do
    demean: bool = True  # subtract each target direction's mean over the vocabulary
    logit_probability: float = 0.95  # `logits` target: top tokens up to this probability
    max_logits: int = 10  # `logits` target: at most this many tokens
    top_features: int = 10  # how many features the CLI and scores.json list
    # circuit-tracer's BOS convention: when token 0 is BOS, its features and error nodes are not
    # graph nodes (their contributions count as constants; BOS's residual is the same in every
    # prompt). Default on, as in circuit-tracer.
    zero_bos: bool = True
    # influence share by position (YY / END / rest): averaged over this many task prompts (one
    # per YY, spread over 2..98; 0 = skip), beside the graph of the seed study's own prompt
    share_prompts: int = 8


@dataclass(frozen=True)
@_checked(
    "features",
    {
        "top_k": "[1, inf)",
        "n_plots": "[0, inf)",
        "n_contexts": "[0, inf)",
        "ablation_prompts": "[0, inf)",
        "prompts_per_pass": "[1, inf)",
        "curve_dense": "[1, inf)",
        "gt_corr": "[-1, 1]",
        "anti_corr": "[-1, 1]",
        "large_zz_corr": "[-1, 1]",
        "parity_corr": "[-1, 1]",
        "narrow_yy_fraction": "[0, 1]",
        "mult5_corr": "[-1, 1]",
        "partial_corr": "[-1, 1]",
        "gated_yy_fraction": "[0, 1]",
        "interaction_top": "[0, inf)",
        "curve_candidates": "[0, inf)",
        "curve_bootstrap": "[0, inf)",
        "family_features": "[0, inf)",
    },
)
class FeaturesConfig:
    """Feature scoring (clt_bench.features) and the comparison with the circuit (clt_bench.compare).

    Prompts: one discovery-set prompt per YY (``graphs.n_prompts`` of them).
    """

    top_k: int = 160
    n_plots: int = 24
    n_contexts: int = 5
    heatmap_mode: Literal["direct", "total"] = "direct"  # graph edges to the logits | all paths
    ablations: bool = True  # constrained and free Delta PD per selected feature
    ablation_prompts: int = 8  # free ablation: active prompts evaluated per feature (0 = all)
    prompts_per_pass: int = 16
    curve_dense: int = 32  # units-needed curve: every k up to this, then steps of x1.25
    # labelling rule thresholds (documented in the report)
    gt_corr: float = 0.5
    anti_corr: float = -0.3
    large_zz_corr: float = 0.5
    parity_corr: float = 0.5
    narrow_yy_fraction: float = 0.25
    mult5_corr: float = 0.5  # multiple-of-5 promoter: row-centred corr with 1[ZZ mod 5 = 0]
    # a label class also needs this partial correlation (its template and the heatmap residualised
    # on the other classes' templates): tells a comparator from a large-ZZ ramp (they correlate .72)
    partial_corr: float = 0.2
    # a comparator / large-ZZ feature active on fewer than this share of YY values is gated: a
    # range comparator (below narrow_yy_fraction: a narrow comparator)
    gated_yy_fraction: float = 0.9
    interaction_top: int = 20  # pair-ablation interactions among this many top features (0: off)
    # units-needed curves (clt_bench.compare.units): exact effects for this many best candidates
    curve_candidates: int = 32
    curve_bootstrap: int = 1000  # bootstrap resamples of the evaluation prompts
    curve_seed: int = 0
    family_features: int = 20  # top features scored on every prompt family (0 = skip)


@dataclass(frozen=True)
class ReportConfig:
    title: str = "clt-bench report"


def _check_stability(s: StabilityConfig) -> None:
    if s.clt_seeds and (len(s.clt_seeds) < 2 or len(set(s.clt_seeds)) != len(s.clt_seeds)):
        raise UserError("stability.clt_seeds must name at least two different CLT seeds.")


@dataclass(frozen=True)
@_checked("stability", {"threshold": "[0, 1]"}, _check_stability)
class StabilityConfig:
    """``clt-bench run --clt-seeds 0,1,2``: the stability stage trains one CLT per further seed
    in ``<run>/seeds/clt-seed<s>/`` and matches their features (empty: no stability stage)."""

    clt_seeds: tuple[int, ...] = ()  # the first is the run's own ``clt.seed``
    plt_seeds: bool = False  # each seed also trains its own PLT (plt.seed = the seed)
    threshold: float = 0.9  # decoder cosine a stable feature's matches reach


@dataclass(frozen=True)
class RunConfig:
    preset: str = "toy"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    clt: CLTConfig = field(default_factory=CLTConfig)
    plt: PLTConfig = field(default_factory=PLTConfig)
    graphs: GraphsConfig = field(default_factory=GraphsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def __post_init__(self) -> None:
        _check_number(self.seed, "seed")

    def section_hash(self, *names: str) -> str:
        return config_hash({n: to_jsonable(getattr(self, n)) for n in names})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_jsonable(self)
        return out


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        _check_choice(value, tp, where)
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except UserError:
                continue
        raise UserError(f"config key '{where}' has the wrong type ({type(value).__name__}).")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise UserError(
                f"config key '{where}' must be {tp.__name__}, got {type(value).__name__} "
                f"({value!r})."
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"config key '{where}' must be a list.")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_check_type(v, arg, where) if arg is not Any else v for v in value]
        return tuple(items) if origin is tuple else items
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise UserError."""
    if not isinstance(data, dict):
        raise UserError(f"config section '{where or cls.__name__}' must be a table.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys: {', '.join(sorted(known))})."
        )
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], key)
        else:
            kwargs[f.name] = _check_type(data[f.name], tp, key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as a TOML literal, falling back to a bare string."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has an empty key.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _deep_set(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"config key '{'.'.join(path)}' does not name a table.")
    node[path[-1]] = value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset_dict(preset: str) -> dict[str, Any]:
    """A preset's TOML as a dict; ``preset`` may also be a run directory (its ``config.json``)."""
    path = Path(preset)
    if (path / "config.json").is_file():
        saved: dict[str, Any] = read_json(path / "config.json")
        return saved
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESETS_DIR / f"{preset}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset '{preset}' (known presets: {', '.join(preset_names())}).")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"preset {path} is not valid TOML ({err}).") from err
    data.setdefault("preset", path.stem)
    return data


def load_config(preset: str = "toy", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a preset by name (or a path to a .toml file, or a run directory whose config.json it
    reads) and apply ``key=value`` overrides."""
    data = load_preset_dict(preset)
    for text in overrides:
        path, value = parse_override(text)
        _deep_set(data, path, value)
    _default_circuit(data)
    cfg: RunConfig = from_dict(RunConfig, data)
    return cfg


def _default_circuit(data: dict[str, Any]) -> None:
    """Where neither the preset nor an override names ``baseline.circuit``, GPT-2 small (by name,
    or a local checkpoint recognised by architecture and tokenizer) gets Hanna et al.'s published
    circuit, so the published faithfulness sits beside the circuit it was measured on; every
    other model gets the circuit rediscovered by path patching (the field's default)."""
    model = data.get("model")
    baseline = data.setdefault("baseline", {})
    if not isinstance(model, dict) or not isinstance(baseline, dict) or "circuit" in baseline:
        return
    from clt_bench.models.hub import is_gpt2

    if isinstance(model.get("name"), str) and is_gpt2(model["name"]):
        baseline["circuit"] = "hanna2023"


def with_section(cfg: RunConfig, name: str, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with fields of section ``name`` replaced."""
    return replace(cfg, **{name: replace(getattr(cfg, name), **changes)})
