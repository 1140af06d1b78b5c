"""Row normalisation: RMSNorm (plain, Gemma, fused residual add) and LayerNorm, fp32 inside.

A program owns BLOCK_M rows. A row of HIDDEN elements is read as NUM_CHUNKS tiles of BLOCK_N:
with one chunk the row stays in registers between the reduction and the output; with several
(very wide rows) the row is read again for the output. Rows of the RMSNorm kernel are indexed
(b, h) = divmod(row, num_heads) so that 3-D [B, H, D] inputs (QK norm) with any B and H
strides need no copy; 2-D inputs pass num_heads = 1.
Grid: (cdiv(num_rows, BLOCK_M),).
"""
import triton
import triton.language as tl


@triton.jit
def _row_ptrs(ptr, offs_m, num_heads, stride_b, stride_h):
    """[BLOCK_M] pointers to the first element of each (b, h) row, int64 address math."""
    row_b = (offs_m // num_heads).to(tl.int64)
    row_h = (offs_m % num_heads).to(tl.int64)
    return ptr + row_b * stride_b + row_h * stride_h


@triton.jit
def _load_weight(w_ptr, offs_n, mask_n, IS_GEMMA: tl.constexpr):
    w = tl.load(w_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if IS_GEMMA:
        w = w + 1.0
    return w


@triton.jit(do_not_specialize=["num_rows", "num_heads"])
def rmsnorm_kernel(
    x_ptr, r_ptr, w_ptr, o_ptr,
    stride_xb, stride_xh, stride_rb, stride_rh, stride_ob, stride_oh,
    num_rows, num_heads, eps,
    HIDDEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, IS_GEMMA: tl.constexpr,
):
    """o = x / sqrt(mean(x^2) + eps) * w (w + 1 with IS_GEMMA).

    HAS_RESIDUAL (fused add): x = x + r in fp32; r <- x rounded to r's dtype; then as above.
    """
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    x_rows = _row_ptrs(x_ptr, offs_m, num_heads, stride_xb, stride_xh)[:, None]
    if HAS_RESIDUAL:
        r_rows = _row_ptrs(r_ptr, offs_m, num_heads, stride_rb, stride_rh)[:, None]
    o_rows = _row_ptrs(o_ptr, offs_m, num_heads, stride_ob, stride_oh)[:, None]
    offs_n0 = tl.arange(0, BLOCK_N)

    if NUM_CHUNKS == 1:
        mask_n = offs_n0 < HIDDEN
        mask = mask_m[:, None] & mask_n[None, :]
        x = tl.load(x_rows + offs_n0[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            x += tl.load(r_rows + offs_n0[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(r_rows + offs_n0[None, :], x.to(r_ptr.dtype.element_ty), mask=mask)
        rstd = tl.rsqrt(tl.sum(x * x, 1) / HIDDEN + eps)
        w = _load_weight(w_ptr, offs_n0, mask_n, IS_GEMMA)
        y = x * rstd[:, None] * w[None, :]
        tl.store(o_rows + offs_n0[None, :], y.to(o_ptr.dtype.element_ty), mask=mask)
    else:
        sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, NUM_CHUNKS * BLOCK_N, BLOCK_N):
            offs_n = start_n + offs_n0
            mask = mask_m[:, None] & (offs_n < HIDDEN)[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                x += tl.load(r_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
                tl.store(r_rows + offs_n[None, :], x.to(r_ptr.dtype.element_ty), mask=mask)
            sum_sq += tl.sum(x * x, 1)
        rstd = tl.rsqrt(sum_sq / HIDDEN + eps)
        for start_n in range(0, NUM_CHUNKS * BLOCK_N, BLOCK_N):
            offs_n = start_n + offs_n0
            mask_n = offs_n < HIDDEN
            mask = mask_m[:, None] & mask_n[None, :]
            if HAS_RESIDUAL:  # the rounded sum just written (same thread, same addresses)
                x = tl.load(r_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            else:
                x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            w = _load_weight(w_ptr, offs_n, mask_n, IS_GEMMA)
            y = x * rstd[:, None] * w[None, :]
            tl.store(o_rows + offs_n[None, :], y.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["num_rows"])
def layernorm_kernel(
    x_ptr, w_ptr, b_ptr, o_ptr, stride_xm, stride_om, num_rows, eps,
    HIDDEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr,
):
    """o = (x - mean) / sqrt(var + eps) * w + b, biased variance of the centred row."""
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    o_rows = o_ptr + offs_m.to(tl.int64)[:, None] * stride_om
    offs_n0 = tl.arange(0, BLOCK_N)

    if NUM_CHUNKS == 1:
        mask_n = offs_n0 < HIDDEN
        mask = mask_m[:, None] & mask_n[None, :]
        x = tl.load(x_rows + offs_n0[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, 1) / HIDDEN
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, 1) / HIDDEN + eps)
        w = tl.load(w_ptr + offs_n0, mask=mask_n, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs_n0, mask=mask_n, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(o_rows + offs_n0[None, :], y.to(o_ptr.dtype.element_ty), mask=mask)
    else:
        # three passes over the row: mean, variance of the centred values, output
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, NUM_CHUNKS * BLOCK_N, BLOCK_N):
            offs_n = start_n + offs_n0
            mask = mask_m[:, None] & (offs_n < HIDDEN)[None, :]
            total += tl.sum(tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32), 1)
        mean = total / HIDDEN
        sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, NUM_CHUNKS * BLOCK_N, BLOCK_N):
            offs_n = start_n + offs_n0
            mask = mask_m[:, None] & (offs_n < HIDDEN)[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean[:, None], 0.0)
            sum_sq += tl.sum(xc * xc, 1)
        rstd = tl.rsqrt(sum_sq / HIDDEN + eps)
        for start_n in range(0, NUM_CHUNKS * BLOCK_N, BLOCK_N):
            offs_n = start_n + offs_n0
            mask_n = offs_n < HIDDEN
            mask = mask_m[:, None] & mask_n[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
            tl.store(o_rows + offs_n[None, :], y.to(o_ptr.dtype.element_ty), mask=mask)
