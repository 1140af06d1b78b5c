"""CUDA-core attention for one query token per request (decode, use_tensor_cores=False).

One program owns one KV head and one KV range; the query heads of its GQA group ride along as
the first axis of a [BLOCK_G, BLOCK_N, D] product reduced on CUDA cores, so each K/V tile is
read once for the whole group and any group size works. The query sits at position kv_len - 1.
Grid: (row, kv heads, splits) with the same two ways of naming work as prefill.py: a single
request split into kv_chunk ranges (axis 2), or a batch plan's work list (axis 0), whose split
requests are merged by their last chunk to finish (common.merge_split_request).
"""
import triton
import triton.language as tl

from .common import (
    finalize, fold_sink, kv_bases, kv_offsets, load_rope, load_work, logits_log2, merge_split_request, softmax_step,
    store_out, tile_pages,
)


@triton.jit(do_not_specialize=["kv_len", "group_size", "kv_chunk", "window_left"])
def decode_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, alibi_ptr, sinks_ptr,
    work_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr, part_o_ptr, part_lse_ptr, merge_indptr_ptr, counter_ptr,
    stride_qn, stride_qh, stride_kpage, stride_kn, stride_kh, stride_vpage, stride_vn, stride_vh,
    stride_os, stride_on, stride_oh, stride_ls, stride_ln, stride_lh,
    stride_w, stride_pn, stride_ph, stride_pln, stride_plh,
    kv_len, group_size, kv_chunk,
    sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta, v_scale,
    HEAD_DIM_QK: tl.constexpr, HEAD_DIM_VO: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DVO: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    USE_ROPE: tl.constexpr, WRITE_LSE: tl.constexpr,
    BATCHED: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    pid_h = tl.program_id(1)
    pid_s = tl.program_id(2)  # always 0 for batch plans
    if BATCHED:
        req, _, lo, hi, slot = load_work(work_ptr, stride_w, tl.program_id(0))
        if req < 0:
            return
        kv_len = tl.load(seq_lens_ptr + req)
        kv_start = tl.load(kv_indptr_ptr + req)  # first page (PAGED) or first token
        row = req.to(tl.int64)
    else:
        slot = -1  # final rows (a split's partial states go to stride_os instead)
        kv_start = tl.full([], 0, tl.int32)
        row = tl.program_id(0).to(tl.int64)
        lo = pid_s * kv_chunk
        hi = tl.minimum(lo + kv_chunk, kv_len)

    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < group_size
    head = pid_h * group_size + offs_g
    q_pos = kv_len - 1

    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dvo = tl.arange(0, BLOCK_DVO)
    mask_dqk = offs_dqk < HEAD_DIM_QK
    mask_dvo = offs_dvo < HEAD_DIM_VO
    offs_n0 = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + row * stride_qn + head[:, None] * stride_qh
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
    if HAS_WINDOW:
        lo = tl.maximum(lo, q_pos - window_left)

    k_base, v_base = kv_bases(k_ptr, v_ptr, pid_h, kv_start, stride_kh, stride_kn, stride_vh, stride_vn, PAGED)
    if PAGED:
        page_ptr = kv_indices_ptr + kv_start  # this request's page ids
    else:
        page_ptr = kv_indices_ptr
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DVO], dtype=tl.float32)

    pages = tile_pages(page_ptr, lo + offs_n0, hi, PAGED, PAGE_SIZE)  # one tile ahead
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < hi
        next_pages = tile_pages(page_ptr, offs_n + BLOCK_N, hi, PAGED, PAGE_SIZE)
        k_rows = k_base + kv_offsets(offs_n, pages, stride_kpage, stride_kn, PAGED, PAGE_SIZE)[:, None]
        mask_k = mask_n[:, None] & mask_dqk[None, :]
        if USE_ROPE:
            k = load_rope(k_rows, offs_dqk, mask_k, offs_n, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        else:
            k = tl.load(k_rows + offs_dqk[None, :], mask=mask_k, other=0.0).to(tl.float32)
        qk = tl.sum(q[:, None, :] * k[None, :, :], 2)
        rel_pos = (offs_n - q_pos)[None, :] + tl.zeros([BLOCK_G, 1], dtype=tl.int32)
        s = logits_log2(qk, sm_scale, soft_cap, slopes, rel_pos, HAS_SOFTCAP, HAS_ALIBI)
        s = tl.where(mask_n[None, :], s, float("-inf"))

        m_new, l_i, alpha, p = softmax_step(m_i, l_i, s)
        v_rows = v_base + kv_offsets(offs_n, pages, stride_vpage, stride_vn, PAGED, PAGE_SIZE)[:, None]
        v = tl.load(v_rows + offs_dvo[None, :], mask=mask_n[:, None] & mask_dvo[None, :], other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)
        m_i = m_new
        pages = next_pages

    if HAS_SINKS:  # a split request's partial states get theirs when merged
        acc, m_i, l_i = fold_sink(acc, m_i, l_i, sinks_ptr, head, mask_g, slot < 0)
    out, lse = finalize(acc, m_i, l_i, v_scale)
    mask_o = mask_g[:, None] & mask_dvo[None, :]
    rows = row + tl.zeros([BLOCK_G], dtype=tl.int64)
    if BATCHED:
        if slot >= 0:  # a partial state of a split request
            p_rows = slot.to(tl.int64) + tl.zeros([BLOCK_G], dtype=tl.int64)
            store_out(part_o_ptr, part_lse_ptr, out, lse, p_rows, head, offs_dvo, mask_o, mask_g, 0, stride_pn,
                      stride_ph, 0, stride_pln, stride_plh, True)
            # the request's last chunk to finish merges them all
            merge_split_request(
                part_o_ptr, part_lse_ptr, o_ptr, lse_ptr, sinks_ptr, counter_ptr, merge_indptr_ptr, req,
                req * tl.num_programs(1) + pid_h, 0, group_size, group_size, 1, row, pid_h, stride_pn, stride_ph,
                stride_pln, stride_plh, stride_on, stride_oh, stride_ln, stride_lh, offs_dvo, mask_dvo, HAS_SINKS,
                WRITE_LSE)
        else:
            store_out(o_ptr, lse_ptr, out, lse, rows, head, offs_dvo, mask_o, mask_g, 0, stride_on, stride_oh,
                      0, stride_ln, stride_lh, WRITE_LSE)
    else:
        store_out(o_ptr, lse_ptr, out, lse, rows, head, offs_dvo, mask_o, mask_g, pid_s.to(tl.int64) * stride_os,
                  stride_on, stride_oh, pid_s.to(tl.int64) * stride_ls, stride_ln, stride_lh, WRITE_LSE)
