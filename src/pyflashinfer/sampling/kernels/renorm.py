"""top_p_renorm_probs: the exact top-p set by the bracket search of sample.py, without sampling.

The bracket (lo, hi) holds the threshold: the criterion "mass above v < top_p x total" is false
at lo and true at hi. Each round is one pass that evaluates the criterion at three pivots:
the bracket's bit-space midpoint (which bounds the rounds), a token drawn (reservoir, fixed
seed) from inside the bracket (pivots where the mass is), and the secant estimate of the
threshold from the masses above lo and hi (fast where the mass varies smoothly); the same pass
keeps, per lane, the mass inside each of the four sub-brackets they cut, and one token is drawn
(lane_draw) inside the sub-bracket that becomes the next bracket. The sub-bracket where the
criterion flips becomes the bracket; its width in float bits at least halves, so within 32
rounds it holds no token of positive mass and the kept set is {p > lo}. (In simulations on
vocab 128256 this takes about 9 rounds, against 15 with the first two pivots only.) The
result does not depend on the draws, so it is deterministic. A last pass writes
p / mass(p > lo) on the kept set and 0 elsewhere.
"""
import triton
import triton.language as tl

from .common import bit_lerp, lane_draw, load_tile, row_param, tile_values, uniform4
from .sample import _first_pass


@triton.jit
def _bracket_pass(x_ptr, row_off, active, vocab, lo, a, b, c, hi, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Per lane: the mass above a, b and c (a <= b <= c), and the mass inside each of (lo, a),
    (a, b), (b, c) and (c, hi)."""
    offs = tl.arange(0, BLOCK)[None, :]
    zero = tl.zeros([ROWS], dtype=tl.float32)
    mass_a = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    mass_b = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    mass_c = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    in0 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    in1 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    in2 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    in3 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = active[:, None] & (cols < vocab)
        v = tile_values(load_tile(x_ptr, row_off, cols, mask, False), mask, zero, False)
        above_a = v > a[:, None]
        above_b = v > b[:, None]
        above_c = v > c[:, None]
        mass_a += tl.where(above_a, v, 0.0)
        mass_b += tl.where(above_b, v, 0.0)
        mass_c += tl.where(above_c, v, 0.0)
        in0 += tl.where((v > lo[:, None]) & (v < a[:, None]), v, 0.0)
        in1 += tl.where(above_a & (v < b[:, None]), v, 0.0)
        in2 += tl.where(above_b & (v < c[:, None]), v, 0.0)
        in3 += tl.where(above_c & (v < hi[:, None]), v, 0.0)
    return mass_a, mass_b, mass_c, in0, in1, in2, in3


@triton.jit
def _pick4(first, second, third, x0, x1, x2, x3):
    """x0 where `first`, else x1 where `second`, else x2 where `third`, else x3."""
    return tl.where(first, x0, tl.where(second, x1, tl.where(third, x2, x3)))


@triton.jit(do_not_specialize=["batch", "top_p"])
def top_p_renorm_kernel(
    x_ptr, out_ptr, top_p_ptr,
    stride_x, stride_out, batch, vocab, top_p,
    TOP_P_PER_ROW: tl.constexpr, MAX_ROUNDS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    TILES: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = rows.to(tl.int64) * stride_x
    out_off = rows.to(tl.int64) * stride_out
    p = row_param(top_p_ptr, top_p, rows, row_mask, TOP_P_PER_ROW, tl.float32, ROWS)
    seeds = tl.zeros([ROWS], dtype=tl.int64)
    thr_key = tl.zeros([ROWS], dtype=tl.uint32)
    total, v_max, row_max, lane_w = _first_pass(x_ptr, row_off, row_mask, vocab, thr_key, False, False, ROWS, BLOCK)
    lo = tl.full([ROWS], -1.0, dtype=tl.float32)
    hi = v_max
    u, _u1, _u2, _u3 = uniform4(seeds, seeds, rows, 0)
    tok, val = lane_draw(x_ptr, row_off, row_mask, vocab, lane_w, u, row_max, lo,
                         tl.full([ROWS], float("inf"), dtype=tl.float32), thr_key, False, False, BLOCK, TILES)
    budget = tl.maximum(p, 1e-30) * total
    lo_mass = total
    hi_mass = tl.zeros([ROWS], dtype=tl.float32)
    pending = (tok >= 0) & (val < hi)
    done = (~row_mask) | (total <= 0.0) | (p >= 1.0)

    for rnd in range(1, MAX_ROUNDS + 1):
        active = ~done
        if tl.max(active.to(tl.int32), axis=0) > 0:
            mid = bit_lerp(lo, hi, 2)
            drawn = tl.where(pending, val, mid)
            lo0 = tl.maximum(lo, 0.0)
            span = tl.where(lo_mass > hi_mass, lo_mass - hi_mass, 1.0)
            secant = tl.minimum(tl.maximum(lo0 + (hi - lo0) * ((lo_mass - budget) / span), lo0), hi)
            a = tl.minimum(tl.minimum(mid, drawn), secant)
            c = tl.maximum(tl.maximum(mid, drawn), secant)
            b = tl.maximum(tl.minimum(mid, drawn), tl.minimum(tl.maximum(mid, drawn), secant))  # median
            lane_a, lane_b, lane_c, in0, in1, in2, in3 = _bracket_pass(x_ptr, row_off, active, vocab, lo, a, b, c, hi,
                                                                       ROWS, BLOCK)
            mass_a = tl.sum(lane_a, axis=1)
            mass_b = tl.sum(lane_b, axis=1)
            mass_c = tl.sum(lane_c, axis=1)
            keep_a = mass_a < budget
            keep_b = mass_b < budget
            keep_c = mass_c < budget
            # the criterion flips in (lo, a], (a, b], (b, c] or (c, hi]
            new_lo = _pick4(keep_a, keep_b, keep_c, lo, a, b, c)
            new_hi = _pick4(keep_a, keep_b, keep_c, a, b, c, hi)
            new_lo_mass = _pick4(keep_a, keep_b, keep_c, lo_mass, mass_a, mass_b, mass_c)
            new_hi_mass = _pick4(keep_a, keep_b, keep_c, mass_a, mass_b, mass_c, hi_mass)
            lane_w = _pick4(keep_a[:, None], keep_b[:, None], keep_c[:, None], in0, in1, in2, in3)
            lo = tl.where(active, new_lo, lo)
            hi = tl.where(active, new_hi, hi)
            lo_mass = tl.where(active, new_lo_mass, lo_mass)
            hi_mass = tl.where(active, new_hi_mass, hi_mass)
            u, _u1, _u2, _u3 = uniform4(seeds, seeds, rows, rnd)
            tok, val = lane_draw(x_ptr, row_off, active, vocab, lane_w, u, row_max, lo, hi, thr_key, False, False,
                                 BLOCK, TILES)
            pending = tok >= 0
            done = done | (active & (tok < 0))

    inv = 1.0 / tl.maximum(lo_mass, 1e-30)
    offs = tl.arange(0, BLOCK)[None, :]
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, False)
        y = tl.where((x > lo[:, None]) & (x > 0.0), x * inv[:, None], 0.0)
        tl.store(out_ptr + out_off[:, None] + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
