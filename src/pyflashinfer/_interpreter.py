"""A fix of Triton's CPU interpreter for bf16 arithmetic and float->fp8 rounding, applied on import
of pyflashinfer when Triton interprets (TRITON_INTERPRET=1).

Why: under TRITON_INTERPRET=1 Triton stores bf16 as raw uint16 bits and feeds them to numpy in
`tl.dot` and arithmetic (garbage results; upstream calls bf16 "not supported yet"), rounds
fp32->bf16 by truncation, and drops the rounding carry in float->fp8 casts (7.98 -> 4.0, no
saturation at 448). With this fix the kernels' own code runs unchanged on bf16 and fp8 data:
bf16 operands are widened to fp32 before the op and results are rounded back to bf16 with
round-to-nearest-even, and casts to fp8 are rounded by torch (RTNE with saturation, as on the
GPU). Reductions over bf16 values are not patched: kernels reduce in fp32.

It replaces private interpreter methods, as written for triton 3.6 (the version CI pins and the
GPU image runs). On another triton it changes nothing, and `check_dtypes` makes a launch with
bf16 or fp8 tensors under the interpreter raise instead of returning garbage.
"""
import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter as _I

_B = _I.InterpreterBuilder
_F8 = {tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}


def _scalar(h):
    return getattr(h.dtype, "scalar", h.dtype)


def _is_bf16(h):
    return _scalar(h) == tl.bfloat16


def _bf16_bits_to_f32(a):
    return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(a):
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32))).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def _as_f32(h):
    return _I.TensorHandle(_bf16_bits_to_f32(h.data), tl.float32) if _is_bf16(h) else h


def _to_f32_np(h):
    if _is_bf16(h):
        return _bf16_bits_to_f32(h.data)
    if _scalar(h) in _F8:
        return torch.from_numpy(np.ascontiguousarray(h.data)).view(_F8[_scalar(h)]).float().numpy()
    return h.data.astype(np.float32)


_orig_dot = getattr(_B, "create_dot", None)
_orig_binary = getattr(_B, "binary_op", None)
_orig_unary = getattr(_B, "unary_op", None)
_orig_cast = getattr(_B, "cast_impl", None)
_orig_fp_to_fp = getattr(_B, "create_fp_to_fp", None)


def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    return _orig_dot(self, _as_f32(a), _as_f32(b), d, input_precision, max_num_imprecise_acc)


def binary_op(self, lhs, rhs, op):
    if not (_is_bf16(lhs) or _is_bf16(rhs)):
        return _orig_binary(self, lhs, rhs, op)
    out = _orig_binary(self, _as_f32(lhs), _as_f32(rhs), op)
    if out.data.dtype == np.float32:  # arithmetic: round back to bf16; comparisons stay bool
        return _I.TensorHandle(_f32_to_bf16_bits(out.data), tl.bfloat16)
    return out


def unary_op(self, arg, op):
    if not _is_bf16(arg):
        return _orig_unary(self, arg, op)
    out = _orig_unary(self, _as_f32(arg), op)
    return _I.TensorHandle(_f32_to_bf16_bits(out.data), tl.bfloat16)


def cast_impl(self, src, dst_type):
    dst = dst_type.scalar
    if dst == tl.bfloat16 and not _is_bf16(src):
        return _I.TensorHandle(_f32_to_bf16_bits(_to_f32_np(src)), tl.bfloat16)
    if _is_bf16(src) and dst != tl.bfloat16:
        return _orig_cast(self, _I.TensorHandle(_bf16_bits_to_f32(src.data), tl.float32), dst_type)
    return _orig_cast(self, src, dst_type)


def create_fp_to_fp(self, src, dst_type, rounding_mode):
    dst = dst_type.scalar
    if dst in _F8:
        t = torch.from_numpy(np.ascontiguousarray(_to_f32_np(src))).to(_F8[dst])
        return _I.TensorHandle(t.view(torch.uint8).numpy(), dst)
    if dst == tl.bfloat16:
        return _I.TensorHandle(_f32_to_bf16_bits(_to_f32_np(src)), tl.bfloat16)
    return _orig_fp_to_fp(self, src, dst_type, rounding_mode)


# The interpreter's methods this replaces, as triton 3.6 names them, and their replacements.
_FIXES = {"create_dot": create_dot, "binary_op": binary_op, "unary_op": unary_op, "cast_impl": cast_impl,
          "create_fp_to_fp": create_fp_to_fp}
SUPPORTED_TRITON = "3.6."
APPLIED = False


def apply() -> bool:
    """Install the fix (once); False, changing nothing, on a triton it was not written for."""
    global APPLIED
    if APPLIED:
        return True
    if not triton.__version__.startswith(SUPPORTED_TRITON) or not all(hasattr(_B, m) for m in _FIXES):
        return False
    for name, fix in _FIXES.items():
        setattr(_B, name, fix)
    APPLIED = True
    return True


_UNFIXED = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def check_dtypes(kernel, kwargs: dict) -> None:
    """Without the fix, bf16 and fp8 kernels give wrong results under the interpreter: refuse them."""
    if APPLIED:
        return
    bad = sorted({str(v.dtype) for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dtype in _UNFIXED})
    if bad:
        name = getattr(kernel, "__name__", "kernel")
        raise NotImplementedError(
            f"{name}: {', '.join(bad)} tensors under Triton's CPU interpreter need pyflashinfer's interpreter "
            f"fix, written for triton {SUPPORTED_TRITON}x; this is triton {triton.__version__}. "
            "Use float16 or float32 on the CPU, or run on a GPU.")
