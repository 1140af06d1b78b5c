"""Rotary position embedding (RoPE) of q and k, one token per program.

One program owns one token: it works out that token's cos/sin once (from the frequency formula,
or from a cos/sin cache) and rotates every q head, then every k head, `BLOCK_H*` heads at a time.
Only the first ROTARY_DIM dims rotate; the rest are copied (out of place) or left alone (in place).

Pairs that rotate together, for i < ROTARY_DIM / 2 (freq index i):
    rotate-half (IS_INTERLEAVE=False): (x[i], x[i + ROTARY_DIM/2])
    interleaved (IS_INTERLEAVE=True):  (x[2i], x[2i + 1])
    (a, b) -> (a cos - b sin, b cos + a sin),  angle = pos * f_i
Frequencies: f_i = rcp_scale * theta^(-2i / ROTARY_DIM), or with Llama 3.1 smoothing
    s = clamp(f * smooth_a + smooth_b, 0, 1),  f' = (1 - s) * f * rcp_scale + s * f.
Grid: (nnz,).
"""
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(in_ptr, out_ptr, stride_ih, stride_oh, num_heads, offs_a, offs_b, mask_r,
                  cos, sin, offs_p, mask_p, BLOCK_H: tl.constexpr, ROTARY_DIM: tl.constexpr,
                  COPY_PASS: tl.constexpr):
    """Rotate heads [0, num_heads) of one token, BLOCK_H at a time (in_ptr may equal out_ptr)."""
    for h0 in range(0, num_heads, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < num_heads
        rows_in = in_ptr + offs_h[:, None] * stride_ih
        rows_out = out_ptr + offs_h[:, None] * stride_oh
        mask = mask_h[:, None] & mask_r[None, :]
        a = tl.load(rows_in + offs_a[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(rows_in + offs_b[None, :], mask=mask, other=0.0).to(tl.float32)
        out_a = a * cos[None, :] - b * sin[None, :]
        out_b = b * cos[None, :] + a * sin[None, :]
        tl.store(rows_out + offs_a[None, :], out_a.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(rows_out + offs_b[None, :], out_b.to(out_ptr.dtype.element_ty), mask=mask)
        if COPY_PASS:
            mask_pass = mask_h[:, None] & mask_p[None, :]
            x = tl.load(rows_in + ROTARY_DIM + offs_p[None, :], mask=mask_pass, other=0.0)
            tl.store(rows_out + ROTARY_DIM + offs_p[None, :], x, mask=mask_pass)


@triton.jit(do_not_specialize=["num_q_heads", "num_k_heads"])
def rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cos_sin_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh,
    stride_qon, stride_qoh, stride_kon, stride_koh, stride_cs,
    num_q_heads, num_k_heads,
    rcp_scale, log2_theta, smooth_a, smooth_b,
    HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    IS_INTERLEAVE: tl.constexpr, IS_LLAMA31: tl.constexpr, HAS_COS_SIN_CACHE: tl.constexpr,
    COPY_PASS: tl.constexpr,
):
    HALF: tl.constexpr = ROTARY_DIM // 2
    pid_n = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + pid_n)

    offs_i = tl.arange(0, BLOCK_R)
    mask_r = offs_i < HALF
    if IS_INTERLEAVE:
        offs_a = 2 * offs_i
        offs_b = 2 * offs_i + 1
    else:
        offs_a = offs_i
        offs_b = offs_i + HALF

    if HAS_COS_SIN_CACHE:
        cs_row = cos_sin_ptr + pos.to(tl.int64) * stride_cs
        cos = tl.load(cs_row + offs_i, mask=mask_r, other=0.0).to(tl.float32)
        sin = tl.load(cs_row + HALF + offs_i, mask=mask_r, other=0.0).to(tl.float32)
    else:
        freq = tl.exp2(offs_i.to(tl.float32) * (-2.0 / ROTARY_DIM) * log2_theta)
        if IS_LLAMA31:
            smooth = tl.minimum(tl.maximum(freq * smooth_a + smooth_b, 0.0), 1.0)
            freq = (1.0 - smooth) * (freq * rcp_scale) + smooth * freq
        else:
            freq = freq * rcp_scale
        angle = pos.to(tl.float32) * freq
        cos = tl.cos(angle)
        sin = tl.sin(angle)

    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < HEAD_DIM - ROTARY_DIM
    _rotate_heads(q_ptr + pid_n * stride_qn, q_out_ptr + pid_n * stride_qon, stride_qh, stride_qoh,
                  num_q_heads, offs_a, offs_b, mask_r, cos, sin, offs_p, mask_p,
                  BLOCK_HQ, ROTARY_DIM, COPY_PASS)
    _rotate_heads(k_ptr + pid_n * stride_kn, k_out_ptr + pid_n * stride_kon, stride_kh, stride_koh,
                  num_k_heads, offs_a, offs_b, mask_r, cos, sin, offs_p, mask_p,
                  BLOCK_HK, ROTARY_DIM, COPY_PASS)
