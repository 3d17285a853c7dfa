"""Text corpora: ``toy`` (synthetic generator), ``fineweb``, ``hf:<dataset>``, ``file:<path>``.

Every corpus is an iterator of documents (strings) in a fixed order, so the same config always
yields the same token stream.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from clt_bench.errors import UserError

log = logging.getLogger(__name__)

TOY_CHUNK = 256  # documents per generate_corpus call
FINEWEB = ("HuggingFaceFW/fineweb", "sample-10BT")
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _toy_documents(seed: int) -> Iterator[str]:
    """Endless stream: chunk i is ``generate_corpus(TOY_CHUNK, seed + i)``."""
    from clt_bench.model_training.synthetic_corpus import generate_corpus

    for i in itertools.count():
        yield from generate_corpus(TOY_CHUNK, seed + i)


def _hf_documents(
    path: str,
    name: str | None,
    split: str,
    text_field: str,
    data_files: str | None = None,
    what: str = "",
) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise UserError("the 'datasets' package is needed for this corpus.") from err
    try:
        ds = datasets.load_dataset(path, name, split=split, streaming=True, data_files=data_files)
        it = iter(ds)
        first = next(it, None)
    except UserError:
        raise
    except Exception as err:
        if data_files is not None:
            raise UserError(
                f"cannot read {what} with datasets ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})."
            ) from err
        raise UserError(
            f"cannot stream {what} from the Hugging Face hub (no network or no such dataset); "
            f'use activations.corpus="toy" or a local file:<path>.'
        ) from err
    if first is None:
        return
    for ex in itertools.chain([first], it):
        if text_field not in ex:
            raise UserError(
                f"{what} has no text field '{text_field}' (fields: "
                f"{', '.join(sorted(ex))}); set activations.text_field."
            )
        text = ex[text_field]
        if isinstance(text, str) and text:
            yield text


def _require_hub(what: str) -> None:
    """Refuse a hub corpus when the hub (``HF_ENDPOINT``'s host) does not answer, unless offline
    mode is set: then the datasets library reads its local cache."""
    from clt_bench.models.hub import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return
    if not hub_reachable():
        raise UserError(
            f"cannot stream {what}: the Hugging Face hub is not reachable (no "
            f'network); use activations.corpus="toy" or a local file:<path>.'
        )


def iter_documents(
    corpus: str, seed: int = 0, text_field: str = "text", split: str = "train"
) -> Iterator[str]:
    """Documents of ``corpus`` in a deterministic order (see module docstring)."""
    if corpus == "toy":
        return _toy_documents(seed)
    if corpus == "fineweb":
        _require_hub("FineWeb")
        return _hf_documents(FINEWEB[0], FINEWEB[1], split, text_field, what="FineWeb")
    if corpus.startswith("hf:") and len(corpus) > 3:
        name, _, config = corpus[3:].partition(":")
        if not Path(name).exists():
            _require_hub(f"dataset '{name}'")
        return _hf_documents(name, config or None, split, text_field, what=f"dataset '{name}'")
    if corpus.startswith("file:") and len(corpus) > 5:
        path = Path(corpus[5:]).expanduser()
        if not path.is_file():
            raise UserError(f"corpus file {path} does not exist.")
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UserError(f"corpus file {path} must end in one of {', '.join(FILE_BUILDERS)}.")
        return _hf_documents(
            builder, None, "train", text_field, data_files=str(path), what=f"corpus file {path}"
        )
    raise UserError(f"unknown corpus '{corpus}' (known: toy, fineweb, hf:<dataset>, file:<path>).")
