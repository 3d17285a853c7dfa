"""Atomic file writes, safetensors I/O and run metadata (versions, git commit, seeds)."""

from __future__ import annotations

import csv
import errno
import functools
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clt_bench.errors import UserError

SCHEMA_VERSION = 1


def os_error_message(err: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One sentence for a failed file operation (read-only folder, full disk, ...)."""
    where = err.filename or path
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason += "; free some space and rerun (finished stages are kept)"
    return f"cannot write {where}: {reason}."


# temporary files of an interrupted write: ours (``atomic_path``) and safetensors' own
TEMP_GLOBS = (".*.tmp", ".tmp*")


def remove_temp_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Delete the temporary files an interrupted write left in ``folder`` (a killed process
    cannot clean up after itself); returns them. Call it only on a folder no other process is
    writing (the run lock, :mod:`clt_bench.runlock`, guarantees that for a run folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = {
        p
        for g in TEMP_GLOBS
        for p in (folder.rglob(g) if recursive else folder.glob(g))
        if p.is_file() and not p.is_symlink()
    }
    for p in found:
        p.unlink(missing_ok=True)
    return sorted(found)


def _file_mode() -> int:
    """0o666 minus the process's umask: what ``open()`` would give a new file (``mkstemp``
    always gives 0o600, which would keep reports and CLTs from the other users of a machine)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    An ``OSError`` (read-only folder, full disk) becomes a one-sentence ``UserError``; ``path``
    keeps its previous content and no temporary file is left behind.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp)
        try:
            os.fchmod(fd, _file_mode())
        finally:
            os.close(fd)
        yield tmp_path
        if tmp_path.exists():  # a writer that replaces the file keeps the umask's mode too
            os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    except OSError as err:
        raise UserError(os_error_message(err, path)) from err
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV (floats rounded to 6 decimals) under ``columns`` (default: the first row's
    keys; no rows and no columns: "")."""
    cols = list(columns if columns is not None else rows[0] if rows else [])
    if not cols:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown pipe table of formatted cells (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def to_jsonable(obj: Any) -> Any:
    """Round-trip through json so dataclasses, tensors and numpy scalars become plain types."""
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_json_default, sort_keys=False)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text, so not a JSON file.") from err


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors, atomically (never pickles)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata=dict(metadata) if metadata else None)
        except SafetensorError as err:  # a full disk or an I/O error, raised as its own type
            raise UserError(_safetensors_write_error(err, path)) from err
    return Path(path)


def _safetensors_write_error(err: Exception, path: str | os.PathLike[str]) -> str:
    """safetensors reports ``I/O error: No space left on device (os error 28) at path ...``:
    the same sentence as an ``OSError`` from any other writer."""
    text = str(err)
    m = re.search(r"os error (\d+)", text)
    if m:
        code = int(m.group(1))
        return os_error_message(OSError(code, os.strerror(code)), path)
    return f"cannot write {path}: {text.splitlines()[0] if text else type(err).__name__}."


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # safetensors raises several error types for corrupt files
        raise UserError(f"{path} is not a readable safetensors file ({err}).") from err


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    names = ["clt-bench", "torch", "transformer-lens", "transformers", "datasets", "safetensors"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_metadata(config: Any = None, seeds: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The provenance block every metrics.json carries."""
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    if seeds is not None:
        meta["seeds"] = dict(seeds)
    if config is not None:
        meta["config"] = to_jsonable(config)
    return meta


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (used to decide whether a finished stage is stale)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` except bytecode caches, in a stable order."""
    return sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")
    )


def hash_files(root: Path, files: list[Path], digest: Any) -> None:
    """Feed each file's path (relative to ``root``) and bytes into ``digest``."""
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")


def content_hash(path: str | Path) -> str:
    """Hash of a file's or a directory's contents (names and bytes), e.g. a loaded CLT.

    Cached on the files' names, sizes and modification times, so a run hashes a large CLT once.
    """
    p = Path(path).resolve()
    if not p.exists():
        raise UserError(f"{path} does not exist.")
    files = [p] if p.is_file() else tree_files(p)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _content_hash(p, stamp)


@functools.lru_cache(maxsize=8)
def _content_hash(p: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    hash_files(p.parent if p.is_file() else p, [Path(f) for f, _, _ in stamp], digest)
    return digest.hexdigest()[:16]


def json_safe(obj: Any) -> Any:
    """NaN / inf floats -> None, recursively (metrics.json stays strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
