"""CUDA-core attention for one query token per request (decode, use_tensor_cores=False).

One program owns one KV head and one KV split; the query heads of its GQA group ride along as
the first axis of a [BLOCK_G, BLOCK_N, D] product that is reduced on CUDA cores, so each K/V
tile is read once for the whole group and any group size works.
Grid: (kv heads, kv splits). The query sits at position kv_len - 1.
"""
import triton
import triton.language as tl

from .common import finalize, load_rope, logits_log2


@triton.jit(do_not_specialize=["kv_len", "group_size", "kv_chunk", "window_left"])
def decode_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, alibi_ptr,
    stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_os, stride_oh, stride_ls, stride_lh,
    kv_len, group_size, kv_chunk,
    sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta, v_scale,
    HEAD_DIM_QK: tl.constexpr, HEAD_DIM_VO: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DVO: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    USE_ROPE: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_s = tl.program_id(1)

    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < group_size
    head = pid_h * group_size + offs_g
    q_pos = kv_len - 1

    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dvo = tl.arange(0, BLOCK_DVO)
    mask_dqk = offs_dqk < HEAD_DIM_QK
    mask_dvo = offs_dvo < HEAD_DIM_VO
    offs_n0 = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + head[:, None] * stride_qh
    mask_q = mask_g[:, None] & mask_dqk[None, :]
    if USE_ROPE:
        q = load_rope(q_rows, offs_dqk, mask_q, tl.zeros([BLOCK_G], dtype=tl.int32) + q_pos,
                      HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        q = q.to(q_ptr.dtype.element_ty).to(tl.float32)  # round like the tensor-core path
    else:
        q = tl.load(q_rows + offs_dqk[None, :], mask=mask_q, other=0.0).to(tl.float32)
    if HAS_ALIBI:
        slopes = tl.load(alibi_ptr + head, mask=mask_g, other=0.0)
    else:
        slopes = tl.zeros([BLOCK_G], dtype=tl.float32)

    lo = pid_s * kv_chunk
    hi = tl.minimum(lo + kv_chunk, kv_len)
    if HAS_WINDOW:
        lo = tl.maximum(lo, q_pos - window_left)

    k_base = k_ptr + pid_h.to(tl.int64) * stride_kh
    v_base = v_ptr + pid_h.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DVO], dtype=tl.float32)

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < hi
        k_rows = k_base + offs_n.to(tl.int64)[:, None] * stride_kn
        mask_k = mask_n[:, None] & mask_dqk[None, :]
        if USE_ROPE:
            k = load_rope(k_rows, offs_dqk, mask_k, offs_n, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        else:
            k = tl.load(k_rows + offs_dqk[None, :], mask=mask_k, other=0.0).to(tl.float32)
        qk = tl.sum(q[:, None, :] * k[None, :, :], 2)
        rel_pos = (offs_n - q_pos)[None, :] + tl.zeros([BLOCK_G, 1], dtype=tl.int32)
        s = logits_log2(qk, sm_scale, soft_cap, slopes, rel_pos, HAS_SOFTCAP, HAS_ALIBI)
        s = tl.where(mask_n[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n.to(tl.int64)[:, None] * stride_vn + offs_dvo[None, :],
                    mask=mask_n[:, None] & mask_dvo[None, :], other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)
        m_i = m_new

    out, lse = finalize(acc, m_i, l_i, v_scale)
    o_ptrs = o_ptr + pid_s.to(tl.int64) * stride_os + head[:, None] * stride_oh + offs_dvo[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_dvo[None, :])
    if WRITE_LSE:
        tl.store(lse_ptr + pid_s.to(tl.int64) * stride_ls + head * stride_lh, lse, mask=mask_g)
