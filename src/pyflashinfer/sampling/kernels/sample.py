"""Filtered sampling without sorting: rejection sampling with pivots, one pass per round.

A filter keeps the tokens whose value v satisfies a criterion that is monotone in v:
  top-p  mass of the tokens with value > v  <  top_p x total mass
  top-k  number of tokens with value > v    <  k           ("joint": top-k as a criterion)
  min-p  v >= min_p x max value
so the kept set T is {v >= tau} for an unknown tau. The state is a bracket (lo, hi): the
criterion is false at lo (nothing <= lo is in T) and true at hi (everything >= hi is in T).

Round 0 draws a candidate s from the whole row (top-k support, see below) by a one-pass
weighted reservoir: one uniform per tile decides whether the tile holds the draw, and the
draw inside the kept tile is resolved by a prefix sum of that tile alone. A round r >= 1 is
one pass that computes, at pivot0 = v_s and pivot1 = the bit-space midpoint of (v_s, hi),
the mass and count above each pivot, and at the same time reservoir-draws the candidates the
next round may need: from {v > pivot0} and from {v > pivot1}. Then
  criterion(pivot0) true        -> s is in T: return it
  criterion(pivot1) true        -> lo, hi = pivot0, pivot1; next candidate from {v > pivot0}
  otherwise                     -> lo = pivot1;              next candidate from {v > pivot1}
and a candidate at or above hi is accepted at once. Every candidate is an exact draw from
p restricted to {v > lo} and T is inside {v > lo}, so an accepted token is an exact draw from
p restricted to T (rejection sampling), and no token outside T (or of probability 0) is ever
returned. The bracket's width in float bits at least halves every round and starts below
2**31, so after at most 31 rounds no float lies inside it and the next candidate is accepted:
MAX_ROUNDS = 32 rounds always suffice; a fixed loop with per-row masks, no `break`.

Top-k as a filter of its own ("top_k_first", top_k_sampling) is exact radix select first
(topk.py); its support then restricts every pass, and top-p applies to the renormalised
top-k distribution. top_p_renorm_kernel runs the same bracket search without sampling: the
pivots are a reservoir draw from inside the bracket and its bit midpoint, until the bracket
holds no token of positive mass.
"""
import triton
import triton.language as tl

from .common import (LOG2E, bit_midpoint, float_below, load_tile, order_key, pick_in_tile, reservoir_step,
                     tile_values, uniform4)
from .topk import topk_threshold

ROUND_STRIDE = tl.constexpr(1048576)  # Philox counter = round * ROUND_STRIDE + tile index


@triton.jit
def _first_pass(x_ptr, row_off, row_mask, vocab, thr_key, seed, offset, stream,
                IS_LOGITS: tl.constexpr, HAS_SUPPORT: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr):
    """Round 0: total mass and largest value of the support, and a reservoir draw from it.
    For logits the running max rescales the mass (online softmax); values end relative to
    the final max, which is returned as row_max (the largest value is then 1.0)."""
    offs = tl.arange(0, BLOCK)[None, :]
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    v_max = tl.zeros([ROWS], dtype=tl.float32)
    total = tl.zeros([ROWS], dtype=tl.float32)
    tile = tl.zeros([ROWS], dtype=tl.int32)
    residual = tl.zeros([ROWS], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, IS_LOGITS)
        if HAS_SUPPORT:
            mask = mask & (order_key(x) >= thr_key[:, None])
        if IS_LOGITS:
            m_new = tl.maximum(m_i, tl.max(tl.where(mask, x, float("-inf")), axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            total = total * tl.exp2((m_i - m_safe) * LOG2E)
            w = tile_values(x, mask, m_safe, True)
            m_i = m_new
        else:
            w = tile_values(x, mask, m_i, False)
            v_max = tl.maximum(v_max, tl.max(w, axis=1))
        u, _u1, _u2, _u3 = uniform4(seed, offset, stream, start // BLOCK)
        total, tile, residual = reservoir_step(tl.sum(w, axis=1), total, tile, residual, u, start // BLOCK)
    row_max = tl.where(m_i == float("-inf"), 0.0, m_i)
    if IS_LOGITS:
        v_max = tl.where(total > 0.0, 1.0, 0.0)
    return total, v_max, row_max, tile, residual


@triton.jit
def _pivot_pass(x_ptr, row_off, active, vocab, thr_key, row_max, piv0, piv1, seed, offset, stream, rnd,
                IS_LOGITS: tl.constexpr, HAS_SUPPORT: tl.constexpr, NEED_COUNT: tl.constexpr,
                ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Round r >= 1: count and mass above both pivots, and reservoir draws above each."""
    offs = tl.arange(0, BLOCK)[None, :]
    cnt0 = tl.zeros([ROWS], dtype=tl.int32)
    cnt1 = tl.zeros([ROWS], dtype=tl.int32)
    mass0 = tl.zeros([ROWS], dtype=tl.float32)
    mass1 = tl.zeros([ROWS], dtype=tl.float32)
    tile0 = tl.zeros([ROWS], dtype=tl.int32)
    tile1 = tl.zeros([ROWS], dtype=tl.int32)
    res0 = tl.zeros([ROWS], dtype=tl.float32)
    res1 = tl.zeros([ROWS], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = active[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, IS_LOGITS)
        if HAS_SUPPORT:
            mask = mask & (order_key(x) >= thr_key[:, None])
        v = tile_values(x, mask, row_max, IS_LOGITS)
        above0 = mask & (v > piv0[:, None])
        above1 = mask & (v > piv1[:, None])
        s0 = tl.sum(tl.where(above0, v, 0.0), axis=1)
        s1 = tl.sum(tl.where(above1, v, 0.0), axis=1)
        if NEED_COUNT:
            cnt0 += tl.sum(above0.to(tl.int32), axis=1)
            cnt1 += tl.sum(above1.to(tl.int32), axis=1)
        u0, u1, _u2, _u3 = uniform4(seed, offset, stream, rnd * ROUND_STRIDE + start // BLOCK)
        mass0, tile0, res0 = reservoir_step(s0, mass0, tile0, res0, u0, start // BLOCK)
        mass1, tile1, res1 = reservoir_step(s1, mass1, tile1, res1, u1, start // BLOCK)
    return cnt0, mass0, tile0, res0, cnt1, mass1, tile1, res1


@triton.jit
def _criterion(v, cnt, mass, k, budget, min_value,
               TOP_K_MODE: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr):
    """Is a token of value v (with `cnt` tokens / `mass` above it) kept by the filter?"""
    ok = cnt >= 0
    if TOP_K_MODE == 2:
        ok = ok & (cnt < k)
    if HAS_TOP_P:
        ok = ok & (mass < budget)
    if HAS_MIN_P:
        ok = ok & (v >= min_value)
    return ok


@triton.jit
def _row_param(ptr, scalar, rows, row_mask, PER_ROW: tl.constexpr, dtype: tl.constexpr, ROWS: tl.constexpr):
    if PER_ROW:
        val = tl.load(ptr + rows, mask=row_mask, other=0).to(dtype)
    else:
        val = tl.zeros([ROWS], dtype=dtype) + scalar
    return val


@triton.jit
def _philox_inputs(seed_ptr, offset_ptr, seed, offset, seed_stride, offset_stride, rows, row_mask,
                   SEED_IN_TENSOR: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr, ROWS: tl.constexpr):
    if SEED_IN_TENSOR:
        seeds = tl.load(seed_ptr + rows * seed_stride, mask=row_mask, other=0).to(tl.int64)
    else:
        seeds = tl.zeros([ROWS], dtype=tl.int64) + seed
    if OFFSET_IN_TENSOR:
        offsets = tl.load(offset_ptr + rows * offset_stride, mask=row_mask, other=0).to(tl.int64)
    else:
        offsets = tl.zeros([ROWS], dtype=tl.int64) + offset
    return seeds, offsets


@triton.jit(do_not_specialize=["stride_x", "batch", "vocab", "top_k", "top_p", "min_p", "seed", "offset",
                               "seed_stride", "offset_stride"])
def sampling_kernel(
    x_ptr, out_ptr, valid_ptr, indices_ptr, top_k_ptr, top_p_ptr, min_p_ptr, seed_ptr, offset_ptr,
    stride_x, batch, vocab, top_k, top_p, min_p, seed, offset, seed_stride, offset_stride,
    IS_LOGITS: tl.constexpr, HAS_INDICES: tl.constexpr,
    TOP_K_MODE: tl.constexpr,  # 0 none, 1 radix-select support (top_k_first), 2 criterion (joint)
    HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    TOP_K_PER_ROW: tl.constexpr, TOP_P_PER_ROW: tl.constexpr, MIN_P_PER_ROW: tl.constexpr,
    SEED_IN_TENSOR: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr,
    MAX_ROUNDS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """out[b] = a token drawn from row indices[b] (or b) of probs/logits, restricted to the filter."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    if HAS_INDICES:
        src = tl.load(indices_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    row_off = src * stride_x
    seeds, offsets = _philox_inputs(seed_ptr, offset_ptr, seed, offset, seed_stride, offset_stride, rows,
                                    row_mask, SEED_IN_TENSOR, OFFSET_IN_TENSOR, ROWS)
    k = _row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    p = _row_param(top_p_ptr, top_p, rows, row_mask, TOP_P_PER_ROW, tl.float32, ROWS)
    min_p_row = _row_param(min_p_ptr, min_p, rows, row_mask, MIN_P_PER_ROW, tl.float32, ROWS)
    HAS_SUPPORT: tl.constexpr = TOP_K_MODE == 1
    if HAS_SUPPORT:
        thr_key = topk_threshold(x_ptr, row_off, row_mask, vocab, k, IS_LOGITS, ROWS, BLOCK, RADIX_BITS)
    else:
        thr_key = tl.zeros([ROWS], dtype=tl.uint32)

    # round 0: a draw from the whole support
    total, v_max, row_max, tile, residual = _first_pass(
        x_ptr, row_off, row_mask, vocab, thr_key, seeds, offsets, rows, IS_LOGITS, HAS_SUPPORT, ROWS, BLOCK)
    no_lo = tl.full([ROWS], -1.0, dtype=tl.float32)
    no_hi = tl.full([ROWS], float("inf"), dtype=tl.float32)
    tok, val = pick_in_tile(x_ptr, row_off, row_mask, vocab, tile, residual, row_max, no_lo, no_hi, thr_key,
                            IS_LOGITS, HAS_SUPPORT, BLOCK)
    failed = (~row_mask) | (total <= 0.0) | (tok < 0)

    # the filter as a bracket (lo, hi); no filter: hi = -inf accepts the first draw
    k = tl.where((k > 0) & (k < vocab), k, vocab + 1)
    budget = tl.where(p < 1.0, tl.maximum(p, 1e-30) * total, float("inf"))
    min_value = tl.minimum(tl.maximum(min_p_row, 0.0), 1.0) * v_max
    lo = no_lo
    if HAS_MIN_P:
        hi = min_value
        lo = float_below(min_value)
    elif (TOP_K_MODE == 2) or HAS_TOP_P:
        hi = v_max
    else:
        hi = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    pending = val > lo
    done = failed | (pending & (val >= hi))

    for rnd in range(1, MAX_ROUNDS + 1):
        active = ~done
        if tl.max(active.to(tl.int32), axis=0) > 0:
            piv0 = tl.where(pending, val, lo)
            piv1 = bit_midpoint(piv0, hi)
            cnt0, mass0, tile0, res0, cnt1, mass1, tile1, res1 = _pivot_pass(
                x_ptr, row_off, active, vocab, thr_key, row_max, piv0, piv1, seeds, offsets, rows, rnd,
                IS_LOGITS, HAS_SUPPORT, TOP_K_MODE == 2, ROWS, BLOCK)
            keep0 = _criterion(piv0, cnt0, mass0, k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            keep1 = _criterion(piv1, cnt1, mass1, k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            accept = active & pending & keep0
            move = active & (~accept)
            go0 = (~keep0) & keep1  # T lies in (pivot0, ...): next draw from {v > pivot0}
            tok0, val0 = pick_in_tile(x_ptr, row_off, move & go0, vocab, tile0, res0, row_max, piv0, no_hi,
                                      thr_key, IS_LOGITS, HAS_SUPPORT, BLOCK)
            tok1, val1 = pick_in_tile(x_ptr, row_off, move & (~go0), vocab, tile1, res1, row_max, piv1, no_hi,
                                      thr_key, IS_LOGITS, HAS_SUPPORT, BLOCK)
            new_tok = tl.where(go0, tok0, tok1)
            new_val = tl.where(go0, val0, val1)
            lost = move & ((tl.where(go0, mass0, mass1) <= 0.0) | (new_tok < 0))
            lo = tl.where(move, tl.where(go0, piv0, piv1), lo)
            hi = tl.where(move & go0, piv1, hi)
            take = move & (~lost)
            tok = tl.where(take, new_tok, tok)
            val = tl.where(take, new_val, val)
            pending = pending | take
            failed = failed | lost
            done = done | accept | lost | (take & (new_val >= hi))

    tl.store(out_ptr + rows, tl.maximum(tok, 0).to(out_ptr.dtype.element_ty), mask=row_mask)
    tl.store(valid_ptr + rows, (done & (~failed)).to(valid_ptr.dtype.element_ty), mask=row_mask)
