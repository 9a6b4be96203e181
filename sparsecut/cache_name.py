"""The name transformers gives the KV cache: ``past_key_values`` up to 5.23, ``cache`` from 5.24.

Model outputs, decoder ``forward`` keywords and ``generate`` follow the installed version; SparseCut's
``forward`` takes either keyword and hands the cache on under the installed one, and its output classes
subclass transformers' own so that their cache field has the installed name too.
"""

from __future__ import annotations

from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_KWARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache passed under either name; both at once is an error, as in transformers."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values
