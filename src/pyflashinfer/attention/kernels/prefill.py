"""Tensor-core (tl.dot) attention: prefill, and decode with use_tensor_cores=True.

Rows of a tile are packed (token, head-in-group) pairs of one KV head, so a GQA group shares
every K/V tile it loads, and any group size works without a dispatch table:
    row r  ->  token r // group_size,  qo head kv_head * group_size + r % group_size.
Grid: (row tiles, kv heads, kv splits). With IS_SPLIT each split writes its normalised partial
output and base-2 LSE to a workspace that merge.py combines.
"""
import triton
import triton.language as tl

from .common import finalize, load_rope, logits_log2


@triton.jit(do_not_specialize=["qo_len", "kv_len", "group_size", "kv_chunk", "window_left"])
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr, alibi_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_os, stride_on, stride_oh, stride_ls, stride_ln, stride_lh,
    qo_len, kv_len, group_size, kv_chunk,
    sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta, v_scale,
    HEAD_DIM_QK: tl.constexpr, HEAD_DIM_VO: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DVO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, USE_ROPE: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_s = tl.program_id(2)

    num_rows = qo_len * group_size
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    tok = offs_m // group_size
    head = pid_h * group_size + offs_m % group_size
    q_pos = tok + (kv_len - qo_len)  # causal alignment: bottom-right

    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dvo = tl.arange(0, BLOCK_DVO)
    mask_dqk = offs_dqk < HEAD_DIM_QK
    mask_dvo = offs_dvo < HEAD_DIM_VO
    offs_n0 = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + tok.to(tl.int64)[:, None] * stride_qn + head[:, None] * stride_qh
    mask_q = mask_m[:, None] & mask_dqk[None, :]
    if USE_ROPE:
        q = load_rope(q_rows, offs_dqk, mask_q, q_pos, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        q = q.to(q_ptr.dtype.element_ty)
    else:
        q = tl.load(q_rows + offs_dqk[None, :], mask=mask_q, other=0.0)
    if HAS_ALIBI:
        slopes = tl.load(alibi_ptr + head, mask=mask_m, other=0.0)
    else:
        slopes = tl.zeros([BLOCK_M], dtype=tl.float32)

    # KV range of this program: its split, cut to what the causal mask and window let through.
    lo = pid_s * kv_chunk
    hi = tl.minimum(lo + kv_chunk, kv_len)
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, num_rows) - 1
    if IS_CAUSAL:
        hi = tl.minimum(hi, last_row // group_size + (kv_len - qo_len) + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, first_row // group_size + (kv_len - qo_len) - window_left)

    k_base = k_ptr + pid_h.to(tl.int64) * stride_kh
    v_base = v_ptr + pid_h.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DVO], dtype=tl.float32)

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < hi
        k_rows = k_base + offs_n.to(tl.int64)[:, None] * stride_kn
        mask_k = mask_n[:, None] & mask_dqk[None, :]
        if USE_ROPE:
            k = load_rope(k_rows, offs_dqk, mask_k, offs_n, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        else:
            k = tl.load(k_rows + offs_dqk[None, :], mask=mask_k, other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)))
        rel_pos = offs_n[None, :] - q_pos[:, None]
        s = logits_log2(qk, sm_scale, soft_cap, slopes, rel_pos, HAS_SOFTCAP, HAS_ALIBI)

        keep = mask_n[None, :] & mask_m[:, None]
        if IS_CAUSAL:
            keep &= rel_pos <= 0
        if HAS_WINDOW:
            keep &= rel_pos >= -window_left
        if HAS_MASK:
            bit = tok.to(tl.int64)[:, None] * kv_len + offs_n[None, :]
            byte = tl.load(mask_ptr + (bit >> 3), mask=keep, other=0).to(tl.int32)
            keep &= ((byte >> (bit & 7).to(tl.int32)) & 1) != 0
        s = tl.where(keep, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n.to(tl.int64)[:, None] * stride_vn + offs_dvo[None, :],
                    mask=mask_n[:, None] & mask_dvo[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
        m_i = m_new

    out, lse = finalize(acc, m_i, l_i, v_scale)
    o_ptrs = (o_ptr + pid_s.to(tl.int64) * stride_os + tok.to(tl.int64)[:, None] * stride_on
              + head[:, None] * stride_oh + offs_dvo[None, :])
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_dvo[None, :])
    if WRITE_LSE:
        l_ptrs = lse_ptr + pid_s.to(tl.int64) * stride_ls + tok.to(tl.int64) * stride_ln + head * stride_lh
        tl.store(l_ptrs, lse, mask=mask_m)
