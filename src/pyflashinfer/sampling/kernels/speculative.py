"""chain_speculative_sampling: accept draft tokens while u x q_draft(d) < p_target(d), then draw
the first non-accepted position from relu(p_target - q_draft) (or the bonus token from the
last target row), with the one-pass reservoir of common.py."""
import triton
import triton.language as tl

from .common import BIG_INDEX, reservoir_step, uniform4
from .sample import _philox_inputs

ROUND_STRIDE = tl.constexpr(1048576)  # Philox counters: the chain's positions below it, the draw's tiles above


@triton.jit
def _residual_tile(draft_ptr, target_ptr, d_off, t_off, cols, mask, use_draft):
    q = tl.load(target_ptr + t_off[:, None] + cols, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(draft_ptr + d_off[:, None] + cols, mask=mask & use_draft[:, None], other=0.0).to(tl.float32)
    q = tl.where(q > 0.0, q, 0.0)
    return tl.maximum(q - p, 0.0), q


@triton.jit(do_not_specialize=["batch", "num_spec", "vocab", "stride_db", "stride_dn", "stride_ib", "stride_tb",
                               "stride_tn", "stride_ob", "seed", "offset", "seed_stride", "offset_stride"])
def chain_speculative_kernel(
    draft_ptr, ids_ptr, target_ptr, out_ptr, accepted_ptr, emitted_ptr, seed_ptr, offset_ptr,
    batch, num_spec, vocab, stride_db, stride_dn, stride_ib, stride_tb, stride_tn, stride_ob,
    seed, offset, seed_stride, offset_stride,
    SEED_IN_TENSOR: tl.constexpr, OFFSET_IN_TENSOR: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    rows64 = rows.to(tl.int64)
    seeds, offsets = _philox_inputs(seed_ptr, offset_ptr, seed, offset, seed_stride, offset_stride, rows,
                                    row_mask, SEED_IN_TENSOR, OFFSET_IN_TENSOR, ROWS)

    # 1. the accepted prefix; `accepted` also counts later positions that would pass on their own
    pos = tl.zeros([ROWS], dtype=tl.int32) + num_spec
    chain = row_mask
    accepted = tl.zeros([ROWS], dtype=tl.int32)
    for i in range(0, num_spec):
        draft_id = tl.load(ids_ptr + rows64 * stride_ib + i, mask=row_mask, other=0).to(tl.int64)
        q_draft = tl.load(draft_ptr + rows64 * stride_db + i * stride_dn + draft_id, mask=row_mask, other=1.0)
        p_target = tl.load(target_ptr + rows64 * stride_tb + i * stride_tn + draft_id, mask=row_mask, other=0.0)
        u_chain, u_alone, _u2, _u3 = uniform4(seeds, offsets, rows, i)
        ok = u_chain * q_draft.to(tl.float32) < p_target.to(tl.float32)
        ok_alone = u_alone * q_draft.to(tl.float32) < p_target.to(tl.float32)
        pos = tl.where(chain & (~ok), i, pos)
        chain = chain & ok
        accepted += tl.where(chain | ok_alone, 1, 0)
        tl.store(out_ptr + rows64 * stride_ob + i, draft_id.to(out_ptr.dtype.element_ty), mask=chain)

    # 2. one draw at `pos` from relu(target - draft) (falling back to target if that is all 0)
    use_draft = pos < num_spec
    d_off = rows64 * stride_db + pos.to(tl.int64) * stride_dn
    t_off = rows64 * stride_tb + pos.to(tl.int64) * stride_tn
    offs = tl.arange(0, BLOCK)[None, :]
    zero = tl.zeros([ROWS], dtype=tl.float32)
    izero = tl.zeros([ROWS], dtype=tl.int32)
    mass_r, tile_r, res_r = zero, izero, zero
    mass_q, tile_q, res_q = zero, izero, zero
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        w_r, w_q = _residual_tile(draft_ptr, target_ptr, d_off, t_off, cols, mask, use_draft)
        u_r, u_q, _u2, _u3 = uniform4(seeds, offsets, rows, ROUND_STRIDE + start // BLOCK)
        mass_r, tile_r, res_r = reservoir_step(tl.sum(w_r, axis=1), mass_r, tile_r, res_r, u_r, start // BLOCK)
        mass_q, tile_q, res_q = reservoir_step(tl.sum(w_q, axis=1), mass_q, tile_q, res_q, u_q, start // BLOCK)
    use_r = mass_r > 0.0
    tile = tl.where(use_r, tile_r, tile_q)
    residual = tl.where(use_r, res_r, res_q)
    cols = tile[:, None] * BLOCK + offs
    mask = row_mask[:, None] & (cols < vocab)
    w_r, w_q = _residual_tile(draft_ptr, target_ptr, d_off, t_off, cols, mask, use_draft)
    w = tl.where(use_r[:, None], w_r, w_q)
    csum = tl.cumsum(w, axis=1)
    target = residual * tl.max(csum, axis=1)
    first = tl.min(tl.where((csum > target[:, None]) & (w > 0.0), cols, BIG_INDEX), axis=1)
    last = tl.max(tl.where(w > 0.0, cols, 0), axis=1)
    token = tl.where(first == BIG_INDEX, last, first)

    # 3. outputs: token at pos, -1 after it; counters are added to
    for j in range(0, num_spec + 1):
        val = tl.where(j == pos, token, -1)
        tl.store(out_ptr + rows64 * stride_ob + j, val.to(out_ptr.dtype.element_ty), mask=row_mask & (j >= pos))
    acc_old = tl.load(accepted_ptr + rows, mask=row_mask, other=0)
    tl.store(accepted_ptr + rows, (acc_old + accepted).to(accepted_ptr.dtype.element_ty), mask=row_mask)
    emit_old = tl.load(emitted_ptr + rows, mask=row_mask, other=0)
    tl.store(emitted_ptr + rows, (emit_old + pos).to(emitted_ptr.dtype.element_ty), mask=row_mask)
