"""Filtered sampling without sorting: rejection sampling with pivots, one pass per round.

A filter keeps the tokens whose value v satisfies a criterion that is monotone in v:
  top-p  mass of the tokens with value > v  <  top_p x total mass
  top-k  number of tokens with value > v    <  k           ("joint": top-k as a criterion)
  min-p  v >= min_p x max value
so the kept set T is {v >= tau} for an unknown tau. The state is a bracket (lo, hi): the
criterion is false at lo (nothing <= lo is in T) and true at hi (everything >= hi is in T).

Round 0 draws a candidate s from the whole row (top-k support, see below). A round r >= 1 is
one pass that evaluates the criterion at four pivots: pivot0 = v_s and the points a quarter,
half and three quarters of the way from v_s to hi in float-bit space. Then
  criterion(pivot0) true        -> s is in T: return it
  otherwise                     -> lo = the highest pivot where it is false, hi = the next
                                   pivot up (or hi); next candidate from {v > lo}
and a candidate at or above hi is accepted at once. Every candidate is an exact draw from
p restricted to {v > lo} and T is inside {v > lo}, so an accepted token is an exact draw from
p restricted to T (rejection sampling), and no token outside T (or of probability 0) is ever
returned. The bracket's width in float bits shrinks at least fourfold every round and starts
below 2**31, so after at most 16 rounds no float lies inside it and the next candidate is
accepted: MAX_ROUNDS = 32 rounds always suffice; a fixed loop with per-row masks, no `break`.
(In simulations of batch 128 x vocab 128256, top-p 0.9 of softmax(N(0, s^2)) logits, the last
row of a batch is done after 3 passes with four pivots, against 4 with two.)

A pass makes no reduction per tile: each thread keeps, for its lane of the row (the columns
j, j + BLOCK, j + 2 BLOCK, ...), the mass above each pivot, and the row's sums are taken once
at the end of the pass. The next candidate is drawn from those lane sums (lane_draw): an
inverse-CDF draw over the tokens in lane order, which is as exact as any other order.

Top-k as a filter of its own ("top_k_first", top_k_sampling) is exact radix select first
(topk.py, a launch of its own that leaves each row's threshold in thr_ptr); its support then
restricts every pass, and top-p applies to the renormalised top-k distribution. top_p_renorm_kernel runs the same bracket search without sampling: the
pivots are a reservoir draw from inside the bracket and its bit midpoint, until the bracket
holds no token of positive mass.
"""
import triton
import triton.language as tl

from .common import (LOG2E, bit_lerp, float_below, lane_draw, load_tile, order_key, row_param,
                     rows_left, source_rows, tile_values, uniform4)
from .topk import rank_candidates, topk_candidates

@triton.jit
def _first_pass(x_ptr, row_off, row_mask, vocab, thr_key,
                IS_LOGITS: tl.constexpr, HAS_SUPPORT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Round 0: each lane's mass of the support (for the first draw), the row's total mass and
    its largest value. For logits each lane keeps its own running max (online softmax per
    lane), rescaled to the row's max at the end, so values are relative to the row's max
    (the largest is 1.0), which is returned as row_max."""
    offs = tl.arange(0, BLOCK)[None, :]
    lane_max = tl.full([ROWS, BLOCK], float("-inf"), dtype=tl.float32)
    lane_w = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, IS_LOGITS)
        if HAS_SUPPORT:
            mask = mask & (order_key(x) >= thr_key[:, None])
        if IS_LOGITS:
            x = tl.where(mask, x, float("-inf"))
            m_new = tl.maximum(lane_max, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            lane_w = lane_w * tl.exp2((lane_max - m_safe) * LOG2E) + tl.exp2((x - m_safe) * LOG2E)
            lane_max = m_new
        else:
            w = tile_values(x, mask, tl.zeros([ROWS], dtype=tl.float32), False)
            lane_w += w
            lane_max = tl.maximum(lane_max, w)
    row_max = tl.max(lane_max, axis=1)
    if IS_LOGITS:
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        lane_w = lane_w * tl.exp2((lane_max - row_max[:, None]) * LOG2E)
        total = tl.sum(lane_w, axis=1)
        v_max = tl.where(total > 0.0, 1.0, 0.0)
    else:
        total = tl.sum(lane_w, axis=1)
        v_max = tl.maximum(row_max, 0.0)
        row_max = tl.zeros([ROWS], dtype=tl.float32)
    return total, v_max, row_max, lane_w


@triton.jit
def _pivot_pass(x_ptr, row_off, active, vocab, thr_key, row_max, piv0, piv1, piv2, piv3,
                IS_LOGITS: tl.constexpr, HAS_SUPPORT: tl.constexpr, NEED_COUNT: tl.constexpr,
                ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Round r >= 1: per lane, the mass above each of the four pivots (returned per lane, for
    the next draw) and, for the top-k criterion, the row's count above each."""
    offs = tl.arange(0, BLOCK)[None, :]
    m0 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    m1 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    m2 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    m3 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    c0 = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    c1 = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    c2 = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    c3 = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = active[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, IS_LOGITS)
        if HAS_SUPPORT:
            mask = mask & (order_key(x) >= thr_key[:, None])
        v = tile_values(x, mask, row_max, IS_LOGITS)
        a0 = mask & (v > piv0[:, None])
        a1 = mask & (v > piv1[:, None])
        a2 = mask & (v > piv2[:, None])
        a3 = mask & (v > piv3[:, None])
        m0 += tl.where(a0, v, 0.0)
        m1 += tl.where(a1, v, 0.0)
        m2 += tl.where(a2, v, 0.0)
        m3 += tl.where(a3, v, 0.0)
        if NEED_COUNT:
            c0 += a0.to(tl.int32)
            c1 += a1.to(tl.int32)
            c2 += a2.to(tl.int32)
            c3 += a3.to(tl.int32)
    return (tl.sum(c0, axis=1), tl.sum(c1, axis=1), tl.sum(c2, axis=1), tl.sum(c3, axis=1),
            m0, m1, m2, m3)


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


# stride_x and vocab are specialised (16-divisible, as model vocabularies are): the passes' tiles
# then load 16 bytes a thread per instruction instead of 4 (top-p at batch 128 x vocab 128256 on
# the H100: 224 -> 105 us).
@triton.jit(do_not_specialize=["batch", "top_k", "top_p", "min_p", "seed", "offset", "seed_stride", "offset_stride"])
def sampling_kernel(
    x_ptr, out_ptr, valid_ptr, indices_ptr, top_k_ptr, top_p_ptr, min_p_ptr, seed_ptr, offset_ptr, thr_ptr, done_ptr,
    stride_x, batch, vocab, top_k, top_p, min_p, seed, offset, seed_stride, offset_stride,
    IS_LOGITS: tl.constexpr, HAS_INDICES: tl.constexpr, HAS_DONE: tl.constexpr,
    TOP_K_MODE: tl.constexpr,  # 0 none, 1 support from thr_ptr (top_k_first), 2 criterion (joint)
    HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
    TOP_K_PER_ROW: tl.constexpr, TOP_P_PER_ROW: tl.constexpr, MIN_P_PER_ROW: tl.constexpr,
    SEED_IN_TENSOR: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr,
    MAX_ROUNDS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    TILES: tl.constexpr,  # a power of two >= cdiv(vocab, BLOCK): the tokens of one lane
):
    """out[b] = a token drawn from row indices[b] (or b) of probs/logits, restricted to the filter."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows_left(done_ptr, rows, rows < batch, HAS_DONE)
    if tl.max(row_mask.to(tl.int32), axis=0) == 0:
        return
    row_off = source_rows(indices_ptr, rows, row_mask, HAS_INDICES) * stride_x
    seeds, offsets = _philox_inputs(seed_ptr, offset_ptr, seed, offset, seed_stride, offset_stride, rows,
                                    row_mask, SEED_IN_TENSOR, OFFSET_IN_TENSOR, ROWS)
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    p = row_param(top_p_ptr, top_p, rows, row_mask, TOP_P_PER_ROW, tl.float32, ROWS)
    min_p_row = row_param(min_p_ptr, min_p, rows, row_mask, MIN_P_PER_ROW, tl.float32, ROWS)
    HAS_SUPPORT: tl.constexpr = TOP_K_MODE == 1
    if HAS_SUPPORT:
        thr_key = tl.load(thr_ptr + rows, mask=row_mask, other=0).to(tl.uint32, bitcast=True)
    else:
        thr_key = tl.zeros([ROWS], dtype=tl.uint32)

    # round 0: a draw from the whole support
    total, v_max, row_max, lane_w = _first_pass(x_ptr, row_off, row_mask, vocab, thr_key, IS_LOGITS, HAS_SUPPORT,
                                                ROWS, BLOCK)
    no_lo = tl.full([ROWS], -1.0, dtype=tl.float32)
    no_hi = tl.full([ROWS], float("inf"), dtype=tl.float32)
    u, _u1, _u2, _u3 = uniform4(seeds, offsets, rows, 0)
    tok, val = lane_draw(x_ptr, row_off, row_mask, vocab, lane_w, u, row_max, no_lo, no_hi, thr_key,
                         IS_LOGITS, HAS_SUPPORT, BLOCK, TILES)
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
            piv1 = bit_lerp(piv0, hi, 1)
            piv2 = bit_lerp(piv0, hi, 2)
            piv3 = bit_lerp(piv0, hi, 3)
            cnt0, cnt1, cnt2, cnt3, w0, w1, w2, w3 = _pivot_pass(
                x_ptr, row_off, active, vocab, thr_key, row_max, piv0, piv1, piv2, piv3,
                IS_LOGITS, HAS_SUPPORT, TOP_K_MODE == 2, ROWS, BLOCK)
            keep0 = _criterion(piv0, cnt0, tl.sum(w0, axis=1), k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            keep1 = _criterion(piv1, cnt1, tl.sum(w1, axis=1), k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            keep2 = _criterion(piv2, cnt2, tl.sum(w2, axis=1), k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            keep3 = _criterion(piv3, cnt3, tl.sum(w3, axis=1), k, budget, min_value, TOP_K_MODE, HAS_TOP_P, HAS_MIN_P)
            accept = active & pending & keep0
            move = active & (~accept)
            # T lies above the highest pivot the criterion rejects and below the next one up
            new_lo = tl.where(keep3, tl.where(keep2, tl.where(keep1, piv0, piv1), piv2), piv3)
            new_hi = tl.where(keep3, tl.where(keep2, tl.where(keep1, piv1, piv2), piv3), hi)
            lane_w = tl.where(keep3[:, None], tl.where(keep2[:, None], tl.where(keep1[:, None], w0, w1), w2), w3)
            u, _u1, _u2, _u3 = uniform4(seeds, offsets, rows, rnd)
            new_tok, new_val = lane_draw(x_ptr, row_off, move, vocab, lane_w, u, row_max, new_lo, no_hi, thr_key,
                                         IS_LOGITS, HAS_SUPPORT, BLOCK, TILES)
            lost = move & (new_tok < 0)
            lo = tl.where(move, new_lo, lo)
            hi = tl.where(move, new_hi, hi)
            take = move & (~lost)
            tok = tl.where(take, new_tok, tok)
            val = tl.where(take, new_val, val)
            pending = pending | take
            failed = failed | lost
            done = done | accept | lost | (take & (new_val >= hi))

    tl.store(out_ptr + rows, tl.maximum(tok, 0).to(out_ptr.dtype.element_ty), mask=row_mask)
    tl.store(valid_ptr + rows, (done & (~failed)).to(valid_ptr.dtype.element_ty), mask=row_mask)


@triton.jit(do_not_specialize=["batch", "top_k", "top_p", "seed", "offset", "seed_stride", "offset_stride"])
def topk_sampling_kernel(
    x_ptr, out_ptr, valid_ptr, done_ptr, slots_ptr, count_ptr, indices_ptr, top_k_ptr, top_p_ptr, seed_ptr,
    offset_ptr, stride_x, batch, vocab, top_k, top_p, seed, offset, seed_stride, offset_stride,
    IS_LOGITS: tl.constexpr, HAS_INDICES: tl.constexpr, HAS_TOP_P: tl.constexpr,
    TOP_K_PER_ROW: tl.constexpr, TOP_P_PER_ROW: tl.constexpr,
    SEED_IN_TENSOR: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr, SLOTS: tl.constexpr, CHUNK: tl.constexpr,
):
    """Top-k first (then top-p on the renormalised top k) for small k, without rejection rounds:
    the row's top-k candidates (topk_candidates: two passes over the row) hold the whole support,
    ranked against each other (rank_candidates), so the nucleus is read off their ranks and the
    draw is an inverse CDF over them in (value descending, token ascending) order. Rows it cannot
    take (k <= 0, k >= vocab, k > BLOCK, or more than SLOTS candidates) get done[b] = 0 and are
    left to topk_threshold_kernel + sampling_kernel; the others get done[b] = 1."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = source_rows(indices_ptr, rows, row_mask, HAS_INDICES) * stride_x
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    p = row_param(top_p_ptr, top_p, rows, row_mask, TOP_P_PER_ROW, tl.float32, ROWS)
    slots, count, ok = topk_candidates(x_ptr, row_off, rows, row_mask, vocab, k, slots_ptr, count_ptr, IS_LOGITS,
                                       ROWS, BLOCK, RADIX_BITS, SLOTS)
    tokens, keys, w, live, larger, above, before = rank_candidates(slots, count, ok, IS_LOGITS, True, ROWS, SLOTS,
                                                                   CHUNK)
    w = tl.where(larger < k[:, None], w, 0.0)  # the top k, ties with the k-th kept
    if HAS_TOP_P:  # the nucleus: the mass of the larger tokens (all in the top k) is < top_p x top-k mass
        budget = tl.where(p < 1.0, tl.maximum(p, 1e-30) * tl.sum(w, axis=1), float("inf"))
        w = tl.where(above < budget[:, None], w, 0.0)
    mass = tl.sum(w, axis=1)
    seeds, offsets = _philox_inputs(seed_ptr, offset_ptr, seed, offset, seed_stride, offset_stride, rows,
                                    row_mask, SEED_IN_TENSOR, OFFSET_IN_TENSOR, ROWS)
    u, _u1, _u2, _u3 = uniform4(seeds, offsets, rows, 0)
    # the kept tokens tile [0, mass) in order, token t at [before_t, before_t + w_t)
    hit = (w > 0.0) & (before <= (u * mass)[:, None])
    start = tl.max(tl.where(hit, before, -1.0), axis=1)
    token = tl.max(tl.where(hit & (before == start[:, None]), tokens, -1), axis=1)
    tl.store(out_ptr + rows, tl.maximum(token, 0).to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(valid_ptr + rows, (mass > 0.0).to(valid_ptr.dtype.element_ty), mask=ok)
    tl.store(done_ptr + rows, ok.to(tl.int32), mask=row_mask)
