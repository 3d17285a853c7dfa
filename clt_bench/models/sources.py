"""Resolve a model name into a TransformerBridge + tokenizer (see ``clt_bench.models``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

__all__ = ["LoadedModel", "load_model", "model_fingerprint", "wrap_hf_gpt2"]

from clt_bench.errors import UserError
from clt_bench.models.bridge import wrap_hf_gpt2
from clt_bench.models.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LoadedModel:
    """A model ready for the pipeline: ``bridge`` runs it with TransformerLens hooks."""

    name: str
    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    loaded_at: float = 0.0  # time.perf_counter() when loading finished (start-up timing)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; every stage puts its tensors (and the CLT) here."""
        return next(self.bridge.parameters()).device

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (known: {', '.join(DTYPES)}).")
    return DTYPES[name]


def check_device(device: str) -> torch.device:
    """``device`` as a torch device; a CUDA device that this machine lacks is a UserError.

    Checked before any model is loaded, so ``--device cuda`` without a GPU ends with one sentence
    instead of a traceback deep inside a stage (and never falls back to the CPU silently).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"unknown device '{device}' (use cpu, cuda or cuda:N).") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device '{device}' was asked for but this machine has no CUDA GPU "
                f"(or torch was built without CUDA); use --device cpu."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device '{device}' does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    elif dev.type not in ("cpu", "meta", "mps"):
        raise UserError(f"unsupported device '{device}' (use cpu, cuda or cuda:N).")
    return dev


def _gpt2_random(seed: int, dtype: torch.dtype) -> TransformerBridge:
    """GPT-2 small's shape (12 layers, 12 heads, d_model 768, vocab 50,257, context 1,024, tied),
    randomly initialised."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).to(dtype)
    return wrap_hf_gpt2(model, gpt2_tokenizer(), "gpt2-random")


def _boot_hub(
    repo: str, device: str, dtype: torch.dtype
) -> tuple[TransformerBridge, PreTrainedTokenizerBase]:
    """Boot a hub model or local checkpoint, with the tokenizer the pipeline encodes with.

    A cached model boots from its snapshot folder, so nothing waits on the network (without
    ``HF_HUB_OFFLINE`` a cached model otherwise loaded after minutes of DNS retries); a model not
    cached is fetched (``hub.HUB_PATTERNS`` only). The tokenizer never adds BOS
    (``hub.task_tokenizer``); a machine without network or cache gets one clear sentence.
    """
    from clt_bench.models.hub import local_snapshot, task_tokenizer

    folder = local_snapshot(repo)
    if folder is None:
        raise UserError(
            f"cannot load '{repo}': the Hugging Face hub is not reachable and the model is not "
            f"in the local cache; use the model 'toy' (offline) or 'gpt2-random'."
        )
    tokenizer = task_tokenizer(str(folder))
    try:
        bridge = TransformerBridge.boot_transformers(
            str(folder), device=device, dtype=dtype, tokenizer=tokenizer
        )
    except Exception as err:  # a folder TransformerLens cannot load (architecture, files)
        raise UserError(
            f"cannot load '{repo}' with TransformerLens ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:200]})."
        ) from err
    return bridge, tokenizer


def load_model(
    name: str = "toy", device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> LoadedModel:
    """Resolve ``name`` (see module docstring) into a ``LoadedModel`` on ``device``."""
    check_device(device)
    torch_dtype = _dtype(dtype)
    tokenizer: PreTrainedTokenizerBase | None = None  # a hub model's own (never adds BOS)
    if name == "toy":
        from clt_bench.models.toy import load_toy_module

        bridge = wrap_hf_gpt2(load_toy_module(dtype=torch_dtype), gpt2_tokenizer(), name)
    elif name == "planted":
        from clt_bench.models.planted import load_planted_module

        bridge = wrap_hf_gpt2(load_planted_module(dtype=torch_dtype), gpt2_tokenizer(), name)
    elif name == "gpt2-random":
        bridge = _gpt2_random(seed, torch_dtype)
    elif name == "gpt2":
        bridge, tokenizer = _boot_hub("gpt2", device, torch_dtype)
    elif name.startswith("hf:") and len(name) > 3:
        bridge, tokenizer = _boot_hub(name[3:], device, torch_dtype)
    else:
        raise UserError(
            f"unknown model '{name}' (known models: toy, planted, gpt2, gpt2-random, "
            f"hf:<name-or-path>)."
        )
    if device != "cpu":
        bridge = bridge.to(device)
    if tokenizer is None:
        tokenizer = gpt2_tokenizer()
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    log.info(
        "loaded model %s (%d layers, d_model %d)", name, bridge.cfg.n_layers, bridge.cfg.d_model
    )
    return LoadedModel(name=name, bridge=bridge, tokenizer=tokenizer, loaded_at=time.perf_counter())


def model_fingerprint(name: str) -> str:
    """Identifies a model's weights where the name alone does not: the retrainable toy, and a
    hub model or local checkpoint by the content of its snapshot (``hub.hub_fingerprint``)."""
    if name in ("toy", "planted"):
        from clt_bench.models.planted import planted_weights
        from clt_bench.models.toy import TOY_WEIGHTS, weights_fingerprint

        return weights_fingerprint(TOY_WEIGHTS if name == "toy" else planted_weights())
    if name == "gpt2" or name.startswith("hf:"):
        from clt_bench.models.hub import hub_fingerprint

        return hub_fingerprint(name)
    return name
