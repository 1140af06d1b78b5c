"""pyflashinfer: FlashInfer-compatible attention and serving kernels in Python and Triton.

`import pyflashinfer as flashinfer` works in code written for FlashInfer's public API.
"""
from . import utils
from .attention import (
    single_decode_with_kv_cache,
    single_prefill_with_kv_cache,
    single_prefill_with_kv_cache_return_lse,
)
from .utils import get_alibi_slopes

__version__ = "0.1.0"
