"""Gated activations: out = act(x[..., :d]) * x[..., d:], in fp32, rounded once.

The input is viewed as rows [num_rows, 2d] (row stride free, last dim contiguous). A program
owns a BLOCK_M x BLOCK_N tile of the output and reads the matching gate and up tiles.
Grid: (cdiv(num_rows, BLOCK_M), cdiv(d, BLOCK_N)).
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
RSQRT_2 = tl.constexpr(0.7071067811865476)

# values of the ACT constexpr (the launcher passes .value)
ACT_SILU = tl.constexpr(0)
ACT_GELU = tl.constexpr(1)
ACT_GELU_TANH = tl.constexpr(2)


@triton.jit
def tanh(x):
    # from exp2 (no libdevice under the CPU interpreter); |x| >= 15 is +-1 in fp32 anyway
    e = tl.exp2(tl.minimum(tl.maximum(x, -15.0), 15.0) * (2.0 * LOG2E))
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def activation(x, ACT: tl.constexpr):
    """silu(x) = x sigmoid(x); gelu(x) = x Phi(x) with erf; gelu_tanh with the tanh approximation."""
    if ACT == ACT_SILU:
        return x / (1.0 + tl.exp2(-x * LOG2E))
    elif ACT == ACT_GELU:
        return 0.5 * x * (1.0 + tl.erf(x * RSQRT_2))
    else:
        return 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@triton.jit(do_not_specialize=["num_rows"])
def act_and_mul_kernel(
    x_ptr, o_ptr, stride_xm, stride_om, num_rows, d,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < num_rows)[:, None] & (offs_n < d)[None, :]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    gate = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_rows + d + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    out = activation(gate, ACT) * up
    o_rows = o_ptr + offs_m.to(tl.int64)[:, None] * stride_om
    tl.store(o_rows + offs_n[None, :], out.to(o_ptr.dtype.element_ty), mask=mask)
