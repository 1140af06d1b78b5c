"""top_p_renorm_probs: the exact top-p set by the bracket search of sample.py, without sampling.

The bracket (lo, hi) holds the threshold: the criterion "mass above v < top_p x total" is false
at lo and true at hi. Each round is one pass that evaluates the criterion at two pivots, a
token drawn (reservoir, fixed seed) from inside the bracket and the bracket's bit-space
midpoint, and draws one token inside each of the three sub-brackets they cut. The sub-bracket
where the criterion flips becomes the bracket; its width in float bits at least halves, so
within 32 rounds it holds no token of positive mass and the kept set is {p > lo}. The result
does not depend on the draws (they only choose pivots where the mass is), so it is
deterministic. A last pass writes p / mass(p > lo) on the kept set and 0 elsewhere.
"""
import triton
import triton.language as tl

from .common import bit_midpoint, load_tile, pick_in_tile, reservoir_step, tile_values, uniform4
from .sample import ROUND_STRIDE, _first_pass, _row_param


@triton.jit
def _bracket_pass(x_ptr, row_off, active, vocab, lo, a, b, hi, seed, offset, stream, rnd,
                  ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Mass above a and above b, and reservoir draws inside (lo, a), (a, b) and (b, hi)."""
    offs = tl.arange(0, BLOCK)[None, :]
    zero = tl.zeros([ROWS], dtype=tl.float32)
    izero = tl.zeros([ROWS], dtype=tl.int32)
    mass_a, mass_b = zero, zero
    w_c, tile_c, res_c = zero, izero, zero
    w_a, tile_a, res_a = zero, izero, zero
    w_b, tile_b, res_b = zero, izero, zero
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = active[:, None] & (cols < vocab)
        v = tile_values(load_tile(x_ptr, row_off, cols, mask, False), mask, zero, False)
        above_a = v > a[:, None]
        above_b = v > b[:, None]
        mass_a += tl.sum(tl.where(above_a, v, 0.0), axis=1)
        mass_b += tl.sum(tl.where(above_b, v, 0.0), axis=1)
        in_c = tl.sum(tl.where((v > lo[:, None]) & (v < a[:, None]), v, 0.0), axis=1)
        in_a = tl.sum(tl.where(above_a & (v < b[:, None]), v, 0.0), axis=1)
        in_b = tl.sum(tl.where(above_b & (v < hi[:, None]), v, 0.0), axis=1)
        u_c, u_a, u_b, _u = uniform4(seed, offset, stream, rnd * ROUND_STRIDE + start // BLOCK)
        w_c, tile_c, res_c = reservoir_step(in_c, w_c, tile_c, res_c, u_c, start // BLOCK)
        w_a, tile_a, res_a = reservoir_step(in_a, w_a, tile_a, res_a, u_a, start // BLOCK)
        w_b, tile_b, res_b = reservoir_step(in_b, w_b, tile_b, res_b, u_b, start // BLOCK)
    return mass_a, mass_b, w_c, tile_c, res_c, w_a, tile_a, res_a, w_b, tile_b, res_b


@triton.jit(do_not_specialize=["stride_x", "stride_out", "batch", "vocab", "top_p"])
def top_p_renorm_kernel(
    x_ptr, out_ptr, top_p_ptr,
    stride_x, stride_out, batch, vocab, top_p,
    TOP_P_PER_ROW: tl.constexpr, MAX_ROUNDS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = rows.to(tl.int64) * stride_x
    out_off = rows.to(tl.int64) * stride_out
    p = _row_param(top_p_ptr, top_p, rows, row_mask, TOP_P_PER_ROW, tl.float32, ROWS)
    seeds = tl.zeros([ROWS], dtype=tl.int64)
    thr_key = tl.zeros([ROWS], dtype=tl.uint32)
    total, v_max, row_max, tile, residual = _first_pass(
        x_ptr, row_off, row_mask, vocab, thr_key, seeds, seeds, rows, False, False, ROWS, BLOCK)
    lo = tl.full([ROWS], -1.0, dtype=tl.float32)
    hi = v_max
    tok, val = pick_in_tile(x_ptr, row_off, row_mask, vocab, tile, residual, row_max, lo,
                            tl.full([ROWS], float("inf"), dtype=tl.float32), thr_key, False, False, BLOCK)
    budget = tl.maximum(p, 1e-30) * total
    lo_mass = total
    pending = (tok >= 0) & (val < hi)
    done = (~row_mask) | (total <= 0.0) | (p >= 1.0)

    for rnd in range(1, MAX_ROUNDS + 1):
        active = ~done
        if tl.max(active.to(tl.int32), axis=0) > 0:
            mid = bit_midpoint(lo, hi)
            piv = tl.where(pending, val, mid)
            a = tl.minimum(piv, mid)
            b = tl.maximum(piv, mid)
            mass_a, mass_b, w_c, tile_c, res_c, w_a, tile_a, res_a, w_b, tile_b, res_b = _bracket_pass(
                x_ptr, row_off, active, vocab, lo, a, b, hi, seeds, seeds, rows, rnd, ROWS, BLOCK)
            keep_a = mass_a < budget
            keep_b = mass_b < budget
            # the criterion flips in (lo, a] (keep_a), in (a, b] (keep_b only) or in (b, hi]
            new_lo = tl.where(keep_a, lo, tl.where(keep_b, a, b))
            new_hi = tl.where(keep_a, a, tl.where(keep_b, b, hi))
            lo_mass = tl.where(active, tl.where(keep_a, lo_mass, tl.where(keep_b, mass_a, mass_b)), lo_mass)
            w = tl.where(keep_a, w_c, tl.where(keep_b, w_a, w_b))
            tile = tl.where(keep_a, tile_c, tl.where(keep_b, tile_a, tile_b))
            residual = tl.where(keep_a, res_c, tl.where(keep_b, res_a, res_b))
            lo = tl.where(active, new_lo, lo)
            hi = tl.where(active, new_hi, hi)
            tok, val = pick_in_tile(x_ptr, row_off, active & (w > 0.0), vocab, tile, residual, row_max, lo, hi,
                                    thr_key, False, False, BLOCK)
            pending = tok >= 0
            done = done | (active & (w <= 0.0))

    inv = 1.0 / tl.maximum(lo_mass, 1e-30)
    offs = tl.arange(0, BLOCK)[None, :]
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, False)
        y = tl.where((x > lo[:, None]) & (x > 0.0), x * inv[:, None], 0.0)
        tl.store(out_ptr + out_off[:, None] + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
