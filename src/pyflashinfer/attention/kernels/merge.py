"""Merge attention states (partial outputs with base-2 LSEs) over a split axis.

    lse = log2(sum_s 2^lse_s),   o = sum_s 2^(lse_s - lse) o_s
All splits fully masked -> o = 0, lse = -inf. With HAS_SINKS the head's sink logit (see
common.fold_sink; head h reads sink h mod sink_heads) adds 2^(sink log2 e) to the sum. One program per (row, head).
With INDPTR, row n merges partial rows [indptr[n], indptr[n + 1]) (a batch plan's split
requests); a row with no partials was written directly by the attention kernel and is skipped.
"""
import triton
import triton.language as tl

from .common import LOG2E, finalize, merge_partials, store_out


@triton.jit(do_not_specialize=["num_splits", "num_heads", "sink_heads"])
def merge_states_kernel(
    v_ptr, s_ptr, o_ptr, lse_ptr, indptr_ptr, sinks_ptr,
    stride_vs, stride_vn, stride_vh, stride_ss, stride_sn, stride_sh,
    stride_on, stride_oh, stride_ln, stride_lh,
    num_splits, num_heads, sink_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WRITE_LSE: tl.constexpr, INDPTR: tl.constexpr,
    HAS_SINKS: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    n = (pid // num_heads).to(tl.int64)
    h = pid % num_heads
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    one = tl.zeros([1], dtype=tl.int32)
    if INDPTR:
        start = tl.load(indptr_ptr + n)
        num_splits = tl.load(indptr_ptr + n + 1) - start
        if num_splits == 0:
            return
        s_row = s_ptr + start.to(tl.int64) * stride_ss + h * stride_sh + one
        v_row = v_ptr + start.to(tl.int64) * stride_vs + h * stride_vh + one
    else:
        s_row = s_ptr + n * stride_sn + h * stride_sh + one
        v_row = v_ptr + n * stride_vn + h * stride_vh + one

    if HAS_SINKS:  # the head's sink logit (natural log) joins the denominator once, here
        sink = tl.load(sinks_ptr + h % sink_heads + one).to(tl.float32) * LOG2E
    else:
        sink = tl.full([1], float("-inf"), dtype=tl.float32)
    # online over BLOCK_S splits at a time, so a chunk's loads are in flight together (split after
    # split, two passes: gqa4 bs1 kv4096's merge of 16 splits took 3.31 us on the H100; this way
    # 3.07, profiler, 2026-12-02: what is left is the chain indptr -> partials -> store)
    acc, m, l = merge_partials(v_row, s_row, num_splits, stride_vs, stride_ss, sink, offs_d, mask_d, one == 0,
                               BLOCK_S)
    out, lse = finalize(acc, m, l, 1.0)
    store_out(o_ptr, lse_ptr, out, lse, n + one.to(tl.int64), h + one, offs_d, mask_d[None, :], one == 0, 0,
              stride_on, stride_oh, 0, stride_ln, stride_lh, WRITE_LSE)


@triton.jit(do_not_specialize=["num_heads"])
def merge_pair_kernel(
    va_ptr, sa_ptr, vb_ptr, sb_ptr, vo_ptr, so_ptr, mask_ptr,
    stride_van, stride_vah, stride_san, stride_sah, stride_vbn, stride_vbh, stride_sbn, stride_sbh,
    stride_von, stride_voh, stride_son, stride_soh, num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """Two states into one: (va, sa) + (vb, sb) -> (vo, so), which may be (va, sa) itself.
    With HAS_MASK, rows whose mask byte is 0 are left as they are. One program per (row, head)."""
    pid = tl.program_id(0)
    n = (pid // num_heads).to(tl.int64)
    h = pid % num_heads
    if HAS_MASK:
        if tl.load(mask_ptr + n) == 0:
            return
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    one = tl.zeros([1], dtype=tl.int32)
    sa = tl.load(sa_ptr + n * stride_san + h * stride_sah + one)
    sb = tl.load(sb_ptr + n * stride_sbn + h * stride_sbh + one)
    m = tl.maximum(sa, sb)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    wa = tl.exp2(sa - m_safe)
    wb = tl.exp2(sb - m_safe)
    va = tl.load(va_ptr + n * stride_van + h * stride_vah + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    vb = tl.load(vb_ptr + n * stride_vbn + h * stride_vbh + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    l = wa + wb
    empty = l == 0.0
    l_safe = tl.where(empty, 1.0, l)
    out = (va * wa + vb * wb) / l_safe
    tl.store(vo_ptr + n * stride_von + h * stride_voh + offs_d, out.to(vo_ptr.dtype.element_ty), mask=mask_d)
    tl.store(so_ptr + n * stride_son + h * stride_soh + one, tl.where(empty, float("-inf"), m + tl.log2(l_safe)))
