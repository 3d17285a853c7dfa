"""The real GPT-2 BPE tokenizer, vendored for offline use (data/gpt2-tokenizer/PROVENANCE.md)."""

from __future__ import annotations

import functools
import logging

from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase

from clt_bench.paths import package_data

logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer from the vendored vocab.json/merges.txt (50,257 tokens, no network)."""
    return GPT2TokenizerFast.from_pretrained(str(package_data("gpt2-tokenizer")))
