"""circuit-tracer's on-disk formats: save / load CLTs and per-layer transcoder sets.

CLT directory (``model_kind: cross_layer_transcoder``): ``config.yaml`` and per layer i
``W_enc_{i}.safetensors`` holding W_enc_i [F, d], b_enc_i [F], b_dec_i [d], threshold_i [F]
(JumpReLU, and BatchTopK's learned inference threshold; we also keep log_threshold_i so a round
trip is bit-exact, and W_skip_i [d, d] if there is a skip connection) and
``W_dec_{i}.safetensors`` holding W_dec_i [F, L - i, d].

Transcoder set (``model_kind: transcoder_set``): ``config.yaml`` with a ``transcoders`` list of
per-layer files (relative paths), each holding W_enc [d, F], W_dec [F, d], b_enc [F], b_dec [d],
optional threshold [F] and W_skip [d, d] (circuit-tracer's SingleLayerTranscoder layout).
Saved weights are always in raw model units (normalisation folded).
"""

from __future__ import annotations

import copy
import math
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
    jump = spec.activation in ("jumprelu", "batchtopk")  # BatchTopK: its inference threshold
    if spec.cross_layer:
        for i in range(spec.n_layers):
            enc = {
                f"W_enc_{i}": clt.W_enc[i],
                f"b_enc_{i}": clt.b_enc[i],
                f"b_dec_{i}": clt.b_dec[i],
            }
            enc[f"log_threshold_{i}"] = clt.log_threshold[i]
            if jump:
                enc[f"threshold_{i}"] = clt.threshold[i]
            if clt.W_skip is not None:
                enc[f"W_skip_{i}"] = clt.W_skip[i]
            save_tensors(path / f"W_enc_{i}.safetensors", enc)
            save_tensors(path / f"W_dec_{i}.safetensors", {f"W_dec_{i}": clt.W_dec[i]})
        write_text(path / "config.yaml", _config(clt, "cross_layer_transcoder", {}))
        return path
    files = []
    for i in range(spec.n_layers):
        t = {
            "W_enc": clt.W_enc[i].T,
            "W_dec": clt.W_dec[i][:, 0],
            "b_enc": clt.b_enc[i],
            "b_dec": clt.b_dec[i],
        }
        t["log_threshold"] = clt.log_threshold[i]
        if jump:
            t["threshold"] = clt.threshold[i]
        if clt.W_skip is not None:
            t["W_skip"] = clt.W_skip[i]
        files.append(f"layer_{i}.safetensors")
        save_tensors(path / files[-1], t)
    write_text(path / "config.yaml", _config(clt, "transcoder_set", {"transcoders": files}))
    return path


def _expect(
    t: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where: Path
) -> torch.Tensor:
    if key not in t:
        raise UserError(f"checkpoint {where} has no tensor '{key}'.")
    if tuple(t[key].shape) != shape:
        raise UserError(
            f"checkpoint {where} has the wrong shape for '{key}': "
            f"{tuple(t[key].shape)}, expected {shape}."
        )
    return t[key]


def _spec(cfg: dict[str, Any], n_layers: int, d: int, f: int, cross: bool, skip: bool) -> CLTSpec:
    ours = cfg.get("clt_bench") or {}
    act = FROM_CT.get(str(cfg.get("activation_function", ours.get("activation", "relu"))))
    if act not in ACTIVATIONS:
        raise UserError(f"unsupported activation_function '{cfg.get('activation_function')}'.")
    return CLTSpec(
        n_layers,
        d,
        f,
        act,
        int(ours.get("k", 32)),
        cross_layer=cross,
        skip=skip,
        bandwidth=float(ours.get("bandwidth", 1.0)),
    )


def _set_threshold(
    clt: CrossLayerTranscoder,
    i: int,
    t: dict[str, torch.Tensor],
    log_key: str,
    key: str,
    where: Path,
) -> None:
    F = clt.spec.n_features
    if log_key in t:
        clt.log_threshold[i] = _expect(t, log_key, (F,), where)
    elif key in t:
        clt.log_threshold[i] = _expect(t, key, (F,), where).clamp_min(1e-30).log()
    else:
        clt.log_threshold[i] = math.log(1e-30)


@torch.no_grad()
def _load_clt_dir(path: Path, cfg: dict[str, Any]) -> CrossLayerTranscoder:
    n_layers = len(list(path.glob("W_enc_*.safetensors")))
    if n_layers == 0:
        raise UserError(f"{path} holds no W_enc_*.safetensors files.")
    first = load_tensors(path / "W_enc_0.safetensors")
    if "W_enc_0" not in first or first["W_enc_0"].dim() != 2:
        raise UserError(f"checkpoint {path / 'W_enc_0.safetensors'} has no 2-d 'W_enc_0'.")
    F, d = first["W_enc_0"].shape
    spec = _spec(cfg, n_layers, d, F, cross=True, skip="W_skip_0" in first)
    clt = CrossLayerTranscoder(spec, dtype=first["W_enc_0"].dtype)
    for i in range(n_layers):
        f_enc, f_dec = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
        t = load_tensors(f_enc)
        clt.W_enc[i] = _expect(t, f"W_enc_{i}", (F, d), f_enc)
        clt.b_enc[i] = _expect(t, f"b_enc_{i}", (F,), f_enc)
        clt.b_dec[i] = _expect(t, f"b_dec_{i}", (d,), f_enc)
        _set_threshold(clt, i, t, f"log_threshold_{i}", f"threshold_{i}", f_enc)
        if clt.W_skip is not None:
            clt.W_skip[i] = _expect(t, f"W_skip_{i}", (d, d), f_enc)
        clt.W_dec[i].copy_(_expect(load_tensors(f_dec), f"W_dec_{i}", (F, n_layers - i, d), f_dec))
    return clt


@torch.no_grad()
def _load_set(path: Path, cfg: dict[str, Any]) -> CrossLayerTranscoder:
    files = cfg.get("transcoders")
    if not isinstance(files, list) or not files:
        raise UserError(f"{path / 'config.yaml'} lists no 'transcoders' files.")
    paths = [p if Path(p).is_absolute() else path / p for p in map(str, files)]
    first = load_tensors(paths[0])
    if "W_enc" not in first or first["W_enc"].dim() != 2:
        raise UserError(f"checkpoint {paths[0]} has no 2-d 'W_enc'.")
    d, F = first["W_enc"].shape
    spec = _spec(cfg, len(paths), d, F, cross=False, skip="W_skip" in first)
    clt = CrossLayerTranscoder(spec, dtype=first["W_enc"].dtype)
    for i, p in enumerate(paths):
        t = load_tensors(p)
        clt.W_enc[i] = _expect(t, "W_enc", (d, F), Path(p)).T
        clt.W_dec[i][:, 0] = _expect(t, "W_dec", (F, d), Path(p))
        clt.b_enc[i] = _expect(t, "b_enc", (F,), Path(p))
        clt.b_dec[i] = _expect(t, "b_dec", (d,), Path(p))
        _set_threshold(clt, i, t, "log_threshold", "threshold", Path(p))
        if clt.W_skip is not None:
            clt.W_skip[i] = _expect(t, "W_skip", (d, d), Path(p))
    return clt


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
    if kind == "cross_layer_transcoder":
        clt = _load_clt_dir(path, cfg)
    elif kind == "transcoder_set":
        clt = _load_set(path, cfg)
    else:
        raise UserError(
            f"{cfg_path}: unknown model_kind '{kind}' "
            f"(known: cross_layer_transcoder, transcoder_set)."
        )
    _validate(clt, cfg, path)
    if clt.spec.activation == "batchtopk" and not _has_threshold(path, cfg, clt.spec.cross_layer):
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


def check_fits(clt: CrossLayerTranscoder, n_layers: int, d_model: int, where: str | Path) -> None:
    """A CLT for a different model shape is bad input, not a shape error deep in a stage."""
    if (clt.n_layers, clt.spec.d_model) != (n_layers, d_model):
        raise UserError(
            f"the CLT at {where} has {clt.n_layers} layers x d_model "
            f"{clt.spec.d_model}; the model has {n_layers} x {d_model}."
        )


def _has_threshold(path: Path, cfg: dict[str, Any], cross: bool) -> bool:
    from safetensors import safe_open

    first = path / "W_enc_0.safetensors" if cross else path / str(cfg["transcoders"][0])
    with safe_open(str(first), framework="pt") as f:
        keys = set(f.keys())
    return bool(keys & {"threshold_0", "log_threshold_0", "threshold", "log_threshold"})
