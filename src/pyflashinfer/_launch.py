"""One place where every Triton kernel of the package is launched.

Launching through `launch` lets the CPU test run record each distinct kernel variant it used
(set PYFLASHINFER_RECORD_VARIANTS=<dir>); `tools/aot_check.py` then compiles every recorded
variant for sm_90 with `triton.compile`, which catches what the interpreter lets through.
"""
from __future__ import annotations

import inspect
import json
import os
import uuid

import torch
import triton
import triton.language as tl

_RECORD_DIR = os.environ.get("PYFLASHINFER_RECORD_VARIANTS")
_seen: set = set()
_record_file = None


def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return ann is tl.constexpr or (isinstance(ann, str) and ann.endswith("constexpr"))


def _record(kernel, kwargs: dict, num_warps: int, num_stages: int) -> None:
    global _record_file
    from triton.runtime.jit import mangle_type

    fn = getattr(kernel, "fn", kernel)
    sig, consts = {}, {}
    for name, param in inspect.signature(fn).parameters.items():
        value = kwargs.get(name, param.default)
        if _is_constexpr(param) or value is None:
            sig[name] = "constexpr"
            consts[name] = value
        else:
            sig[name] = mangle_type(value)
    entry = {"module": fn.__module__, "name": fn.__name__, "signature": sig, "constexprs": consts,
             "num_warps": num_warps, "num_stages": num_stages}
    key = json.dumps(entry, sort_keys=True)
    if key in _seen:
        return
    _seen.add(key)
    if _record_file is None:
        os.makedirs(_RECORD_DIR, exist_ok=True)
        _record_file = open(os.path.join(_RECORD_DIR, f"variants-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"), "a")
    _record_file.write(key + "\n")
    _record_file.flush()


def launch(kernel, grid, *, num_warps: int = 4, num_stages: int = 2, **kwargs) -> None:
    """kernel[grid](**kwargs) with launch options; records the variant when asked to."""
    if _RECORD_DIR:
        _record(kernel, kwargs, num_warps, num_stages)
    kernel[grid](**kwargs, num_warps=num_warps, num_stages=num_stages)


def cdiv(a: int, b: int) -> int:
    return triton.cdiv(a, b)


_POISON = os.environ.get("PYFLASHINFER_POISON_OUTPUTS", "0") == "1"


def empty_output(*shape, dtype, device):
    """torch.empty for a kernel's output; NaN-filled when PYFLASHINFER_POISON_OUTPUTS=1 (the
    tests set it) so that an element the kernel forgot to write fails loudly."""
    if _POISON:
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
