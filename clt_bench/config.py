"""Run configuration: frozen dataclasses from TOML presets plus ``--set a.b=value`` overrides.

Each pipeline stage owns one section dataclass below. Unknown keys are errors; values are
type-checked against the field's annotation. ``RunConfig.section_hash(names)`` gives the hash that a
stage records so that a changed config recomputes it.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.io import config_hash, to_jsonable
from clt_bench.paths import PACKAGE_DIR

PRESETS_DIR = PACKAGE_DIR / "presets"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "toy"  # toy | gpt2 | gpt2-random | hf:<name-or-path>
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0  # for gpt2-random weights


@dataclass(frozen=True)
class TaskConfig:
    task: str = "greater_than"
    template: str = "hanna"
    dataset: str = (
        "discovery"  # discovery | headline (sizes and seeds live in tasks/<task>/task.toml)
    )
    n: int = 0  # 0 = the dataset's own size
    seed: int = -1  # -1 = the dataset's own seed
    batch_size: int = 128


@dataclass(frozen=True)
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
class ActivationsConfig:
    corpus: str = "toy"  # toy | fineweb | hf:<dataset> | file:<path to txt/json/jsonl/parquet>
    n_tokens: int = 400_000  # training tokens taken from the corpus (one epoch)
    eval_tokens: int = 16_384  # held-out tokens (after the training tokens) for quality metrics
    seq_len: int = 64  # one document per row, split into pieces of at most seq_len tokens
    batch_size: int = 32  # rows per model forward pass
    shard_tokens: int = 65_536
    seed: int = 1234  # corpus seed (toy: generator seed; others: shuffle of the block order)
    mode: str = "cache"  # cache (shards on disk) | stream (on the fly, shuffle buffer)
    shuffle_buffer: int = 65_536  # tokens per shuffled block (cache: rounded up to whole shards)
    text_field: str = "text"
    split: str = "train"
    dtype: str = "float32"  # storage dtype of cached activations: float32 | float16 | bfloat16


@dataclass(frozen=True)
class CLTConfig:
    kind: str = "clt"  # clt | plt
    n_features: int = 1024  # per layer
    activation: str = "jumprelu"  # jumprelu | topk | batchtopk | relu
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
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard) when run under torchrun
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    load: str = ""  # path to an existing circuit-tracer CLT/PLT directory (skip training)
    decoder: str = "auto"  # dense | sparse | auto: decoder over the active rows only when sparse


@dataclass(frozen=True)
class GraphsConfig:
    node_threshold: float = 0.8  # keep nodes up to this share of cumulative influence
    edge_threshold: float = 0.98  # keep edges up to this share of cumulative edge influence
    n_prompts: int = 97  # one per YY of the balanced set
    max_feature_nodes: int = 4096  # attribute at most this many active features (by influence)
    batch_size: int = 64  # rows (injected gradients) per batched backward pass
    prompt: str = "The war lasted from the year 1711 to the year 17"
    target: str = "greater-than"  # greater-than | logits | answers | a token string
    prepend_bos: bool = True  # text prompts start with BOS, as the task prompts do
    demean: bool = False  # subtract each target direction's mean over the vocabulary
    logit_probability: float = 0.95  # `logits` target: top tokens up to this probability
    max_logits: int = 10  # `logits` target: at most this many tokens
    top_features: int = 10  # how many features the CLI and scores.json list


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature scoring (clt_bench.features) and the comparison with the circuit (clt_bench.compare).

    Prompts: one discovery-set prompt per YY (``graphs.n_prompts`` of them).
    """

    top_k: int = 160
    n_plots: int = 24
    n_contexts: int = 5
    heatmap_mode: str = "direct"  # direct (graph edges to the answer logits) | total (all paths)
    ablations: bool = True  # constrained and free Delta PD per selected feature
    ablation_prompts: int = 8  # free ablation: active prompts evaluated per feature (0 = all)
    prompts_per_pass: int = 16
    curve_background: str = "clean"  # clean | corrupted (see clt_bench.compare.curve)
    curve_dense: int = 32  # units-needed curve: every k up to this, then steps of x1.25
    # labelling rule thresholds (documented in the report)
    gt_corr: float = 0.5
    anti_corr: float = -0.3
    large_zz_corr: float = 0.5
    parity_corr: float = 0.5
    narrow_yy_fraction: float = 0.25


@dataclass(frozen=True)
class ReportConfig:
    title: str = "clt-bench report"


@dataclass(frozen=True)
class RunConfig:
    preset: str = "toy"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    clt: CLTConfig = field(default_factory=CLTConfig)
    graphs: GraphsConfig = field(default_factory=GraphsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def section_hash(self, *names: str) -> str:
        return config_hash({n: to_jsonable(getattr(self, n)) for n in names})

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
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
        if dataclasses.is_dataclass(tp):
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
    path = Path(preset)
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
    """Load a preset by name (or a path to a .toml file) and apply ``key=value`` overrides."""
    data = load_preset_dict(preset)
    for text in overrides:
        path, value = parse_override(text)
        _deep_set(data, path, value)
    return from_dict(RunConfig, data)


def with_section(cfg: RunConfig, name: str, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with fields of section ``name`` replaced."""
    return replace(cfg, **{name: replace(getattr(cfg, name), **changes)})
