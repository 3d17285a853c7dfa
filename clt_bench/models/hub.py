"""Hub and local checkpoints: the snapshot on disk (``local_snapshot``, fetching only config,
tokenizer and safetensors files), its content fingerprint (``snapshot_fingerprint``: other weights
under the same name recompute every stage), the tokenizer the pipeline encodes with
(``task_tokenizer``: it never adds BOS, the task adds its own BOS text) and whether a model is
GPT-2 small (``is_gpt2``: by name or, for ``hf:<path>``, by architecture and tokenizer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError

# what clt-bench needs from a hub repo (GPT-2's repo also holds .bin, .h5, .msgpack and ONNX
# copies of the weights, ~2 GB that are never read)
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
GPT2_NAMES = ("gpt2", "openai-community/gpt2")
# GPT-2 small as a Hugging Face config
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257}
_PROBE = " The war lasted from the year 1711 to the year 17"
_BLOB = re.compile(r"^[0-9a-f]{64}$")  # an LFS blob of a hub cache is named by its sha256


def hub_name(model: str) -> str | None:
    """The hub repo or local path a model name loads from (``gpt2``, ``hf:<x>``), else None."""
    if model == "gpt2":
        return "gpt2"
    if model.startswith("hf:") and len(model) > 3:
        return model[3:]
    return None


def cached_snapshot(repo: str) -> Path | None:
    """The local folder of ``repo``: the path itself, or its snapshot in the HF cache (no
    network); None when it is not cached."""
    path = Path(repo).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except Exception:  # not cached (LocalEntryNotFoundError), or an unusual cache layout
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def local_snapshot(repo: str, fetch: bool = True) -> Path | None:
    """``cached_snapshot``, or (``fetch``, hub reachable) the files of ``HUB_PATTERNS`` downloaded
    into the cache first; None when neither works (the model loader then says why)."""
    found = cached_snapshot(repo)
    if found is not None or not fetch:
        return found
    if not hub_reachable():
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
        if not weight_files(folder):  # a repo without safetensors: its PyTorch .bin files
            folder = Path(snapshot_download(repo, allow_patterns=[*HUB_PATTERNS, "*.bin"]))
        return folder
    except Exception:
        return None


def weight_files(folder: Path) -> list[Path]:
    """The files a checkpoint's weights are read from: its safetensors, else its .bin files."""
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("*.bin"))


def _file_identity(path: Path) -> str:
    """A file's content identity: a hub blob's name (its sha256) where the file is a link to one,
    else the sha256 of its bytes (cached on size and modification time)."""
    target = path.resolve()
    if path.is_symlink() and _BLOB.match(target.name) and target.parent.name == "blobs":
        return target.name
    from clt_bench.io import content_hash

    return content_hash(target)


def snapshot_fingerprint(folder: Path) -> str:
    """Hash of a checkpoint folder's config, tokenizer and weight files (names and content)."""
    digest = hashlib.sha256()
    small = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".txt", ".model"))
    for f in [*small, *weight_files(folder)]:
        if f.is_file():
            digest.update(f"{f.name}\0{_file_identity(f)}\0".encode())
    return digest.hexdigest()[:16]


def hub_fingerprint(model: str) -> str:
    """``model`` plus the content fingerprint of its snapshot (fetched first when the hub is
    reachable and it is not cached, so the first run and the next one agree)."""
    repo = hub_name(model)
    if repo is None:
        return model
    folder = local_snapshot(repo)
    if folder is None:  # the loader will raise its own clear error; nothing to identify
        return f"{model}@unavailable"
    return f"{model}@{snapshot_fingerprint(folder)}"


@functools.lru_cache(maxsize=1)
def _gpt2_vocab() -> dict[str, int]:
    from clt_bench.models.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer().get_vocab()


def is_gpt2_tokenizer(tok: PreTrainedTokenizerBase) -> bool:
    """Whether ``tok`` is GPT-2's BPE tokenizer (same vocabulary, same split of a task prompt)."""
    from clt_bench.models.tokenizer import gpt2_tokenizer

    try:
        same_vocab = len(tok) == 50257 and tok.get_vocab() == _gpt2_vocab()
        return same_vocab and tok.encode(_PROBE, add_special_tokens=False) == (
            gpt2_tokenizer().encode(_PROBE, add_special_tokens=False)
        )
    except Exception:
        return False


def _load_tokenizer(repo: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(repo, add_bos_token=False)
    except Exception as err:
        raise UserError(f"cannot load the tokenizer of '{repo}' ({type(err).__name__}).") from err


def task_tokenizer(repo: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``repo`` as the pipeline needs it: ``encode`` adds no special token.

    GPT-2's tokenizer is the vendored one. Another tokenizer is loaded with
    ``add_bos_token=False``; one that still adds special tokens to every text is a UserError (the
    task's prompts already start with the BOS text, so a second one would shift every position).
    """
    from clt_bench.models.tokenizer import gpt2_tokenizer

    tok = _load_tokenizer(repo)
    if is_gpt2_tokenizer(tok):
        return gpt2_tokenizer()
    if tok.encode(_PROBE) != tok.encode(_PROBE, add_special_tokens=False):
        raise UserError(
            f"the tokenizer of '{repo}' adds special tokens to every text even with "
            f"add_bos_token=False, and the task adds its own BOS; clt-bench cannot use it."
        )
    return tok


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=16)
def _gpt2_folder(folder: str, stamp: float) -> bool:
    cfg = _read_config(Path(folder))
    arch = cfg.get("model_type") == "gpt2" and all(cfg.get(k) == v for k, v in GPT2_SMALL.items())
    if not arch:
        return False
    try:
        return is_gpt2_tokenizer(_load_tokenizer(folder))
    except UserError:
        return False


def is_gpt2(model: str) -> bool:
    """Whether ``model`` is GPT-2 small: ``gpt2`` or ``hf:[openai-community/]gpt2`` by name, or
    ``hf:<local folder>`` whose config is GPT-2 small's architecture and whose tokenizer is
    GPT-2's (the weights are not checked: the report's sanity flag says whether the model does the
    task). ``gpt2-random`` is not GPT-2."""
    repo = hub_name(model)
    if repo is None:
        return False
    if repo.lower() in GPT2_NAMES:
        return True
    path = Path(repo).expanduser()
    if not (path / "config.json").is_file():
        return False
    return _gpt2_folder(str(path.resolve()), os.path.getmtime(path / "config.json"))
