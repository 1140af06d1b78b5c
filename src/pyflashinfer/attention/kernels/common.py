"""Device helpers shared by the attention kernels (module level: the interpreter resolves
jit helpers only through module globals)."""
import os

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# Read as Triton itself does, when the kernels are defined: their code under the CPU interpreter
# may not use inline assembly.
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def tanh(x):
    # tanh from exp2: no libdevice (the CPU interpreter has none); saturates cleanly at +-1.
    e = tl.exp2(x * (2.0 * LOG2E))
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def load_rope(row_ptrs, offs_d, mask, pos, HEAD_DIM: tl.constexpr, rope_rcp_scale, rope_log2_theta):
    """Load rows [R, BLOCK_D] and apply Llama (rotate-half) RoPE at positions pos [R], in fp32.

    out[d] = x[d] cos(pos f_i) - x[d + D/2] sin(pos f_i)       (d <  D/2, i = d)
    out[d] = x[d] cos(pos f_i) + x[d - D/2] sin(pos f_i)       (d >= D/2, i = d - D/2)
    f_i = rope_rcp_scale * theta^(-2i/D)
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    x = tl.load(row_ptrs + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    first = offs_d < HALF
    offs_rot = tl.where(first, offs_d + HALF, offs_d - HALF)
    x_rot = tl.load(row_ptrs + offs_rot[None, :], mask=mask, other=0.0).to(tl.float32)
    x_rot = tl.where(first[None, :], -x_rot, x_rot)
    idx = tl.where(first, offs_d, offs_d - HALF).to(tl.float32)
    inv_freq = rope_rcp_scale * tl.exp2(idx * (-2.0 / HEAD_DIM) * rope_log2_theta)
    angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]
    return x * tl.cos(angle) + x_rot * tl.sin(angle)


@triton.jit
def logits_log2(qk, sm_scale, soft_cap, slopes, rel_pos, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """Raw q.k (fp32) -> logits in log2 units: scale, ALiBi bias, soft cap, then * log2(e).

    slopes [R] and rel_pos [R, N] (key position - query position) matter only with HAS_ALIBI.
    """
    if HAS_SOFTCAP or HAS_ALIBI:
        s = qk * sm_scale
        if HAS_ALIBI:
            s += slopes[:, None] * rel_pos.to(tl.float32)
        if HAS_SOFTCAP:
            s = soft_cap * tanh(s / soft_cap)
        return s * LOG2E
    else:
        return qk * (sm_scale * LOG2E)


@triton.jit
def fold_sink(acc, m_i, l_i, sinks_ptr, head, mask_r, final):
    """Attention sinks: one extra logit per qo head (natural-log units, not scaled by sm_scale)
    that joins the softmax denominator only: out = sum_j e^{s_j} v_j / (sum_j e^{s_j} + e^{sink}).
    `final` False (a partial state of a split, merged later) leaves the state as it is."""
    sink = tl.load(sinks_ptr + head, mask=mask_r, other=float("-inf")).to(tl.float32) * LOG2E
    sink = tl.where(final, sink, float("-inf"))
    m_new, l_new, alpha, _ = softmax_step(m_i, l_i, sink[:, None])
    return acc * alpha[:, None], m_new, l_new


@triton.jit
def finalize(acc, m_i, l_i, v_scale):
    """Normalise the online-softmax state: out = acc / l * v_scale (0 for fully masked rows),
    lse = m + log2(l) in base 2 (-inf for fully masked rows)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (v_scale / l_safe)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(l_safe))
    return out, lse


@triton.jit
def load_work(work_ptr, stride_w, w):
    """One work item of a batch plan: (request, row tile, kv start, kv end, partial slot).
    request < 0 marks padding (CUDA-graph plans keep a fixed grid); slot < 0 writes the output
    directly, slot >= 0 writes a partial state that merge.py combines."""
    req = tl.load(work_ptr + w)
    m_tile = tl.load(work_ptr + stride_w + w)
    kv_lo = tl.load(work_ptr + 2 * stride_w + w)
    kv_hi = tl.load(work_ptr + 3 * stride_w + w)
    slot = tl.load(work_ptr + 4 * stride_w + w)
    return req, m_tile, kv_lo, kv_hi, slot


@triton.jit
def tile_pages(page_ptr, offs_n, hi, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """Page ids (int64) of a request's KV tokens offs_n, 0 from hi on (page_ptr points at its
    first page id); contiguous KV has none (zeros). The KV loops read a tile's ids one tile
    ahead, so that no load of the loop depends on another load of the same iteration: Triton's
    software pipeliner then keeps the K/V copies of later tiles in flight (with the ids loaded
    in the same iteration it gave K/V a single buffer, and every tile waited for its copies)."""
    if PAGED:
        return tl.load(page_ptr + offs_n // PAGE_SIZE, mask=offs_n < hi, other=0).to(tl.int64)
    else:
        return tl.zeros_like(offs_n).to(tl.int64)


@triton.jit
def kv_offsets(offs_n, pages, stride_page, stride_tok, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """Element offsets (int64) of KV tokens offs_n of one request: through their page ids
    (tile_pages) or contiguous (pages unused)."""
    if PAGED:
        return pages * stride_page + (offs_n % PAGE_SIZE).to(tl.int64) * stride_tok
    else:
        return offs_n.to(tl.int64) * stride_tok


@triton.jit
def store_out(o_ptr, lse_ptr, out, lse, rows, head, offs_d, mask_o, mask_r, o_off, stride_on, stride_oh,
              l_off, stride_ln, stride_lh, WRITE_LSE: tl.constexpr):
    """Store final rows (rows: int64 token index, head: qo head) into out [.., H, D] and lse."""
    tl.store(o_ptr + o_off + rows[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask_o)
    if WRITE_LSE:
        tl.store(lse_ptr + l_off + rows * stride_ln + head * stride_lh, lse, mask=mask_r)


@triton.jit
def kv_bases(k_ptr, v_ptr, pid_h, kv_start, stride_kh, stride_kn, stride_vh, stride_vn, PAGED: tl.constexpr):
    """Base pointers of one KV head's K and V for a request: the cache's (PAGED: pages are
    found through the page table) or its first token's (contiguous, kv_start = first token)."""
    h = pid_h.to(tl.int64)
    if PAGED:
        return k_ptr + h * stride_kh, v_ptr + h * stride_vh
    else:
        first = kv_start.to(tl.int64)
        return k_ptr + h * stride_kh + first * stride_kn, v_ptr + h * stride_vh + first * stride_vn


@triton.jit
def softmax_step(m_i, l_i, s):
    """One online-softmax step over logits s [R, N] (log2 units, -inf = masked): the new running
    max, the new running sum, the factor that rescales the old accumulator, and p = 2^(s - max)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), alpha, p


@triton.jit
def merge_partials(v_rows, s_rows, num_splits, stride_vs, stride_ss, sink, offs_d, mask_d, mask_r,
                   BLOCK_S: tl.constexpr):
    """The online merge of R rows' partial states over their num_splits splits, BLOCK_S splits at
    a time (their loads in flight together): v_rows [R] points at each row's split-0 output,
    s_rows [R] at its split-0 LSE (base 2), split s at + s * stride_vs / stride_ss; sink [R]:
    each row's sink logit in log2 units (-inf for none). Returns (acc [R, BLOCK_D], m [R], l [R])
    for `finalize`: out = acc / l, lse = m + log2(l), fully masked rows l = 0.

        lse = log2(sum_s 2^lse_s),   o = sum_s 2^(lse_s - lse) o_s

    Partials are read past L1 (.cg): in a fused merge another program of the launch wrote them."""
    m = sink
    l = tl.where(sink == float("-inf"), 0.0, 1.0)
    acc = tl.zeros([v_rows.shape[0], offs_d.shape[0]], dtype=tl.float32)
    offs_s = tl.arange(0, BLOCK_S)
    for s0 in range(0, num_splits, BLOCK_S):
        splits = s0 + offs_s
        mask_rs = mask_r[:, None] & (splits < num_splits)[None, :]
        lse_c = tl.load(s_rows[:, None] + splits[None, :] * stride_ss, mask=mask_rs, other=float("-inf"),
                        cache_modifier=".cg")
        v_c = tl.load(v_rows[:, None, None] + splits.to(tl.int64)[None, :, None] * stride_vs
                      + offs_d[None, None, :], mask=mask_rs[:, :, None] & mask_d[None, None, :], other=0.0,
                      cache_modifier=".cg")
        m, l, alpha, w = softmax_step(m, l, lse_c)  # the split LSEs are the logits of this softmax
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * v_c, 1)
    return acc, m, l


@triton.jit
def last_arrival(counter_ptr, count):
    """Count this program in at counter_ptr; True for the last of `count` programs, which resets
    the counter to 0 for the next launch. The barrier orders every thread's earlier global stores
    before the (single-thread) release of the count, and its acquire orders the last program's
    later loads after every other program's stores (as CUTLASS's semaphores do)."""
    tl.debug_barrier()
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == count - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
    return last


@triton.jit
def merge_split_request(part_o_ptr, part_lse_ptr, o_ptr, lse_ptr, sinks_ptr, counter_ptr, merge_indptr_ptr,
                        req, counter_idx, rows_lo, rows_hi, group_size, n_tokens, q_start, pid_h,
                        stride_pn, stride_ph, stride_pln, stride_plh, stride_on, stride_oh, stride_ln, stride_lh,
                        offs_d, mask_d, HAS_SINKS: tl.constexpr, WRITE_LSE: tl.constexpr):
    """A split decode request's fused merge. Each of its KV chunks' programs calls this after
    storing its partial state for packed rows [rows_lo, rows_hi) of KV head pid_h (row r: token
    r // group_size, qo head pid_h * group_size + r % group_size); the last of them to arrive at
    counter_idx merges every chunk's state into out/lse (the sinks join here), MERGE_R rows and
    MERGE_S chunks at a time (8K fp32 in flight: 4 x 16 at head dim 128). Chunk c of the request
    wrote token t's rows to partial row (merge_indptr[req] + c) * n_tokens + t. Saves the merge
    launch (benchmarks/RESULTS.md, H200 2026-12-04: one launch of host time per split call)."""
    MERGE_S: tl.constexpr = 16
    MERGE_R: tl.constexpr = 8192 // (MERGE_S * offs_d.shape[0])  # head dims <= 256: >= 2
    chunk0 = tl.load(merge_indptr_ptr + req)
    num_chunks = tl.load(merge_indptr_ptr + req + 1) - chunk0
    if last_arrival(counter_ptr + counter_idx, num_chunks):
        for r0 in range(rows_lo, rows_hi, MERGE_R):
            offs_r = r0 + tl.arange(0, MERGE_R)
            mask_r = offs_r < rows_hi
            tok = offs_r // group_size
            head = pid_h * group_size + offs_r % group_size
            p_row = (chunk0 * n_tokens + tok).to(tl.int64)
            if HAS_SINKS:
                sink = tl.load(sinks_ptr + head, mask=mask_r, other=float("-inf")).to(tl.float32) * LOG2E
            else:
                sink = tl.full([MERGE_R], float("-inf"), dtype=tl.float32)
            acc, m, l = merge_partials(part_o_ptr + p_row * stride_pn + head * stride_ph,
                                       part_lse_ptr + p_row * stride_pln + head * stride_plh, num_chunks,
                                       n_tokens * stride_pn, n_tokens * stride_pln, sink, offs_d, mask_d, mask_r,
                                       MERGE_S)
            out, lse = finalize(acc, m, l, 1.0)
            store_out(o_ptr, lse_ptr, out, lse, (q_start + tok).to(tl.int64), head, offs_d,
                      mask_r[:, None] & mask_d[None, :], mask_r, 0, stride_on, stride_oh, 0, stride_ln, stride_lh,
                      WRITE_LSE)
