"""circuit-tracer's on-disk formats: save and load CLTs (``model_kind: cross_layer_transcoder``)
and per-layer transcoder sets (``transcoder_set``), laid out as docs/architecture.md ("CLT
directory") describes. Saved weights are in raw model units (normalisation folded); a CLT also
keeps ``log_threshold_i`` beside ``threshold_i``, so a round trip is bit-exact.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from clt_bench.clt.model import ACTIVATIONS, CLTSpec, CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.io import load_tensors, save_tensors, write_text

CT_ACTIVATION = {"jumprelu": "jump_relu", "relu": "relu", "topk": "topk", "batchtopk": "batchtopk"}
FROM_CT = {v: k for k, v in CT_ACTIVATION.items()} | {"jumprelu": "jumprelu"}


def _folded(clt: CrossLayerTranscoder) -> CrossLayerTranscoder:
    if bool((clt.input_scale == 1).all()) and bool((clt.output_scale == 1).all()):
        return clt
    out = copy.deepcopy(clt)
    out.fold_normalisation()
    return out


def _config(clt: CrossLayerTranscoder, kind: str, extra: dict[str, Any]) -> str:
    spec = clt.spec
    cfg = {
        "model_kind": kind,
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
        "activation_function": CT_ACTIVATION[spec.activation],
        "n_layers": spec.n_layers,
        "d_model": spec.d_model,
        "d_transcoder": spec.n_features,
        **extra,
        "clt_bench": spec.to_dict(),
    }
    return yaml.safe_dump(cfg, sort_keys=False)


@torch.no_grad()
def save_clt(clt: CrossLayerTranscoder, path: str | Path) -> Path:
    """Write ``clt`` (normalisation folded) in circuit-tracer format; a PLT as a transcoder set."""
    path = Path(path)
    clt = _folded(clt)
    spec = clt.spec
    cross = spec.cross_layer
    jump = spec.activation in ("jumprelu", "batchtopk")  # BatchTopK: its inference threshold
    files = []
    for i in range(spec.n_layers):
        s = f"_{i}" if cross else ""  # a CLT's tensor names carry the layer, a set's do not
        t = {
            f"W_enc{s}": clt.W_enc[i] if cross else clt.W_enc[i].T,
            f"b_enc{s}": clt.b_enc[i],
            f"b_dec{s}": clt.b_dec[i],
            f"log_threshold{s}": clt.log_threshold[i],
        }
        if jump:
            t[f"threshold{s}"] = clt.threshold[i]
        if clt.W_skip is not None:
            t[f"W_skip{s}"] = clt.W_skip[i]
        if cross:
            save_tensors(path / f"W_enc_{i}.safetensors", t)
            save_tensors(path / f"W_dec_{i}.safetensors", {f"W_dec_{i}": clt.W_dec[i]})
        else:
            t["W_dec"] = clt.W_dec[i][:, 0]
            files.append(f"layer_{i}.safetensors")
            save_tensors(path / files[-1], t)
    if cross:
        write_text(path / "config.yaml", _config(clt, "cross_layer_transcoder", {}))
    else:
        write_text(path / "config.yaml", _config(clt, "transcoder_set", {"transcoders": files}))
    return path


def _expect(
    t: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where: Path
) -> torch.Tensor:
    if key not in t:
        raise UserError(f"checkpoint {where} has no tensor '{key}'.")
    if not t[key].is_floating_point():
        raise UserError(
            f"checkpoint {where} holds '{key}' as {str(t[key].dtype).removeprefix('torch.')}; "
            "a transcoder's weights must be floating point."
        )
    if tuple(t[key].shape) != shape:
        raise UserError(
            f"checkpoint {where} has the wrong shape for '{key}': "
            f"{tuple(t[key].shape)}, expected {shape}."
        )
    return t[key]


def _yaml_number(table: dict[str, Any], key: str, default: Any, kind: type, where: str) -> Any:
    """``table[key]`` as ``kind`` (int or float), or one sentence naming the key in config.yaml."""
    value = table.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (kind is float and not math.isfinite(value)) or value <= 0:
        what = "a positive integer" if kind is int else "a positive number"
        raise UserError(f"{where} must give {key} as {what} (got {value!r}).")
    return kind(value)


def _spec(
    cfg: dict[str, Any], n_layers: int, d: int, f: int, cross: bool, skip: bool, path: Path
) -> CLTSpec:
    ours = cfg.get("clt_bench") or {}
    where = f"{path / 'config.yaml'}: its 'clt_bench' entry"
    if not isinstance(ours, dict):
        raise UserError(
            f"{where} must be a mapping of keys (k, bandwidth, ...), not a {type(ours).__name__}."
        )
    act = FROM_CT.get(str(cfg.get("activation_function", ours.get("activation", "relu"))))
    if act not in ACTIVATIONS:
        raise UserError(f"unsupported activation_function '{cfg.get('activation_function')}'.")
    return CLTSpec(
        n_layers,
        d,
        f,
        act,
        _yaml_number(ours, "k", 32, int, where),
        cross_layer=cross,
        skip=skip,
        bandwidth=_yaml_number(ours, "bandwidth", 1.0, float, where),
    )


def _layer_count(path: Path, cfg: dict[str, Any]) -> int:
    """The number of layers: config.yaml's ``n_layers`` or, without it, the highest layer index of
    the weight files + 1; every W_enc_i / W_dec_i below it must be there (a missing file named,
    rather than a shape error in another layer's decoder)."""
    found = {
        (kind, int(m.group(1)))
        for kind in ("W_enc", "W_dec")
        for f in path.glob(f"{kind}_*.safetensors")
        if (m := re.fullmatch(rf"{kind}_(\d+)\.safetensors", f.name))
    }
    if not any(kind == "W_enc" for kind, _ in found):
        raise UserError(f"{path} holds no W_enc_*.safetensors files.")
    stated = cfg.get("n_layers")
    if stated is not None and (not isinstance(stated, int) or isinstance(stated, bool)):
        raise UserError(
            f"{path / 'config.yaml'} must give n_layers as an integer (got {stated!r})."
        )
    n = stated if stated is not None else 1 + max(i for _, i in found)
    for i in range(n):
        for kind in ("W_enc", "W_dec"):
            if (kind, i) not in found:
                said = (
                    f"config.yaml states n_layers = {n}"
                    if stated is not None
                    else (f"layer {n - 1} has weight files")
                )
                raise UserError(f"{path} has no {kind}_{i}.safetensors ({said}).")
    return n


@torch.no_grad()
def _load(path: Path, cfg: dict[str, Any], cross: bool) -> tuple[CrossLayerTranscoder, bool]:
    """The CLT directory (``cross``) or transcoder set at ``path``, and whether its first layer's
    file holds a threshold."""
    if cross:
        files = [path / f"W_enc_{i}.safetensors" for i in range(_layer_count(path, cfg))]
    else:
        names = cfg.get("transcoders")
        if not isinstance(names, list) or not names:
            raise UserError(f"{path / 'config.yaml'} lists no 'transcoders' files.")
        root = path.resolve()
        files = [path / p for p in map(str, names)]  # an absolute p stays absolute
        for p in files:
            if not p.resolve().is_relative_to(root):
                raise UserError(
                    f"{path / 'config.yaml'} lists the transcoder file {p}, outside the folder; "
                    "a transcoder set reads only files inside its own folder."
                )

    def key(name: str, i: int) -> str:  # a CLT's tensor names carry the layer, a set's do not
        return f"{name}_{i}" if cross else name

    first = load_tensors(files[0])
    w0 = key("W_enc", 0)
    if w0 not in first or first[w0].dim() != 2:
        raise UserError(f"checkpoint {files[0]} has no 2-d '{w0}'.")
    _expect(first, w0, tuple(first[w0].shape), files[0])
    F, d = first[w0].shape if cross else first[w0].T.shape
    spec = _spec(cfg, len(files), d, F, cross=cross, skip=key("W_skip", 0) in first, path=path)
    clt = CrossLayerTranscoder(spec, dtype=first[w0].dtype)
    for i, f in enumerate(files):
        t = load_tensors(f)
        if cross:
            clt.W_enc[i] = _expect(t, f"W_enc_{i}", (F, d), f)
        else:
            clt.W_enc[i] = _expect(t, "W_enc", (d, F), f).T
            clt.W_dec[i][:, 0] = _expect(t, "W_dec", (F, d), f)
        clt.b_enc[i] = _expect(t, key("b_enc", i), (F,), f)
        clt.b_dec[i] = _expect(t, key("b_dec", i), (d,), f)
        if key("log_threshold", i) in t:
            clt.log_threshold[i] = _expect(t, key("log_threshold", i), (F,), f)
        elif key("threshold", i) in t:
            theta = _expect(t, key("threshold", i), (F,), f)
            clt.log_threshold[i] = theta.clamp_min(1e-30).log()
        else:
            clt.log_threshold[i] = math.log(1e-30)
        if clt.W_skip is not None:
            clt.W_skip[i] = _expect(t, key("W_skip", i), (d, d), f)
        if cross:
            f_dec = path / f"W_dec_{i}.safetensors"
            w_dec = _expect(load_tensors(f_dec), f"W_dec_{i}", (F, len(files) - i, d), f_dec)
            clt.W_dec[i].copy_(w_dec)
    thresholds = {"threshold_0", "log_threshold_0", "threshold", "log_threshold"}
    return clt, bool(first.keys() & thresholds)


def load_clt(path: str | Path, device: str | torch.device = "cpu") -> CrossLayerTranscoder:
    """Load a circuit-tracer CLT directory or per-layer transcoder set (see module docstring)
    onto ``device`` (pass the model's, ``LoadedModel.device``), in eval mode."""
    path = Path(path)
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{path} is not a CLT directory (no config.yaml).")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{cfg_path} is not valid YAML.") from err
    if not isinstance(cfg, dict):
        raise UserError(
            f"{cfg_path} must be a mapping of keys (model_kind, ...), not a {type(cfg).__name__}."
        )
    kind = cfg.get("model_kind", "cross_layer_transcoder")
    if kind not in ("cross_layer_transcoder", "transcoder_set"):
        raise UserError(
            f"{cfg_path}: unknown model_kind '{kind}' "
            f"(known: cross_layer_transcoder, transcoder_set)."
        )
    clt, has_threshold = _load(path, cfg, cross=kind == "cross_layer_transcoder")
    _validate(clt, cfg, path)
    if clt.spec.activation == "batchtopk" and not has_threshold:
        raise UserError(
            f"the BatchTopK transcoder at {path} has no learned threshold "
            f"(threshold_i); clt-bench runs BatchTopK at inference with it."
        )
    return clt.to(device).eval().requires_grad_(False)


def _validate(clt: CrossLayerTranscoder, cfg: dict[str, Any], path: Path) -> None:
    """The sizes config.yaml states match the tensors; every weight is finite."""
    spec = clt.spec
    for key, got in (
        ("n_layers", spec.n_layers),
        ("d_model", spec.d_model),
        ("d_transcoder", spec.n_features),
    ):
        want = cfg.get(key)
        if want is not None and (not isinstance(want, int) or isinstance(want, bool)):
            raise UserError(
                f"{path / 'config.yaml'} must give {key} as an integer (got {want!r}); "
                f"the weight files hold {got}."
            )
        if want is not None and want != got:
            raise UserError(
                f"{path / 'config.yaml'} states {key} = {want} but the weight files hold {got}."
            )
    for name, p in clt.named_parameters():
        if name == "log_threshold" and spec.activation != "jumprelu":
            continue
        bad = ~torch.isfinite(p)
        if bad.any():
            raise UserError(f"the CLT at {path} has {int(bad.sum())} NaN/Inf values in '{name}'.")
        if name == "log_threshold":
            continue
        big = float(p.detach().abs().max()) if p.numel() else 0.0
        if big > MAX_WEIGHT:
            raise UserError(
                f"the CLT at {path} has a weight of magnitude {big:.3g} in '{name}', beyond "
                f"{MAX_WEIGHT:.0e}: products of such weights overflow float32 (a scaling bug?)."
            )


# no trained transcoder has weights near this size (raw model units: GPT-2's residual norms are
# in the hundreds to thousands); a few products of such weights overflow float32 (max 3.4e38),
# which would surface as non-finite attribution graphs far from the cause
MAX_WEIGHT = 1e10


def check_fits(clt: CrossLayerTranscoder, n_layers: int, d_model: int, where: str | Path) -> None:
    """A CLT for a different model shape is bad input, not a shape error deep in a stage."""
    if (clt.n_layers, clt.spec.d_model) != (n_layers, d_model):
        raise UserError(
            f"the CLT at {where} has {clt.n_layers} layers x d_model "
            f"{clt.spec.d_model}; the model has {n_layers} x {d_model}."
        )


def load_run_clt(
    run_dir: str | Path, name: str = "clt", device: str | torch.device = "cpu"
) -> CrossLayerTranscoder:
    """The transcoder a run's clt stage wrote (``<run>/<name>/``)."""
    path = Path(run_dir) / name
    if not (path / "config.yaml").is_file():
        raise UserError(f"no trained CLT in {path}; run the clt stage first.")
    return load_clt(path, device)
