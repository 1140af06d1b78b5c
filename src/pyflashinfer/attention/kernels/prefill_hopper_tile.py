"""What a consumer warpgroup of the Hopper prefill kernel (prefill_hopper.py) does to one
tile: its register layouts, the mask of a tile's logits (causal, window, packed custom mask),
the soft cap, the online-softmax step, P and V as P V's operands, and the output's store."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma_wait


@gluon.constexpr_function
def global_io_layout(head_dim, num_warps):
    """Global loads and stores of [rows, head_dim] tiles: 16 bytes per thread along the head dim."""
    return gl.BlockedLayout([1, 8], [32 // (head_dim // 8), head_dim // 8], [num_warps, 1], [1, 0])


@gluon.constexpr_function
def mask_bits_layout():
    """A warpgroup's [64 rows, 32 bytes] of packed mask bits: each warp holds 16 rows, as the
    wgmma accumulator does (so per-row results move to it within the warp)."""
    return gl.BlockedLayout([4, 4], [4, 8], [4, 1], [1, 0])


@gluon.jit
def mask_row_starts(mask_ptr, a, u, WG: gl.constexpr, layout: gl.constexpr):
    """Per row of warpgroup WG of unit u, in `layout`: the byte of the request's packed mask that
    holds its key 0 (token t's bits start at bit t kv_len), that key's bit in it, and whether the
    row is the request's."""
    offs_m = u.first_row + WG * 64 + gl.arange(0, 64, layout=layout)
    first_bit = (offs_m // a.group_size).to(gl.int64) * u.kv_len
    return mask_ptr + (first_bit >> 3), (first_bit & 7).to(gl.int32), offs_m < u.num_rows


@gluon.jit
def mask_rows(custom, start_n, hi, BLOCK_N: gl.constexpr, row_layout: gl.constexpr):
    """Per row of the warpgroup, whether its custom-mask bits of keys [start_n, min(start_n +
    BLOCK_N, hi)) are all 1 (full) or all 0 (empty), from the bytes that hold them: one
    coalesced [64, 32] byte load per tile in place of one byte per logit."""
    _, _, _, rows_ptr, rows_bit, rows_ok = custom
    bits_layout: gl.constexpr = mask_bits_layout()
    pos = rows_bit + start_n
    k8 = 8 * gl.arange(0, 32, layout=gl.SliceLayout(0, bits_layout))
    lo = gl.minimum(gl.maximum((pos & 7)[:, None] - k8[None, :], 0), 8)  # the bits of byte k the range holds
    hi_bit = gl.minimum(gl.maximum(gl.minimum(hi - start_n, BLOCK_N) + (pos & 7)[:, None] - k8[None, :], 0), 8)
    need = ((1 << hi_bit) - 1) & ~((1 << lo) - 1)
    byte = gl.load(rows_ptr[:, None] + ((pos >> 3)[:, None] + k8[None, :] // 8),
                   mask=(need != 0) & rows_ok[:, None], other=0).to(gl.int32)
    got = byte & need
    full = gl.max((got != need).to(gl.int32), 1) == 0
    empty = gl.max((got != 0).to(gl.int32), 1) == 0
    return gl.convert_layout(full, row_layout), gl.convert_layout(empty, row_layout)


@gluon.jit
def mask_tile(s, start_n, seen_by_all, window_all, hi, q_pos, window_left, custom, IS_CAUSAL: gl.constexpr,
              HAS_WINDOW: gl.constexpr, HAS_MASK: gl.constexpr, BLOCK_N: gl.constexpr, col_layout: gl.constexpr):
    """Logits of one tile with keys past hi, (causal) after the row's position, (custom mask)
    whose bit is 0 or (window) before its window set to -inf, on the tiles that have any: those
    reaching past seen_by_all (every tile with a custom mask), or (window) starting before
    window_all, the first key every row's window holds. custom: per row, the byte of the packed
    mask that holds its key 0 and that key's bit in it, and whether the row is the request's
    (in the accumulator's row layout, then in mask_bits_layout's); bits are loaded per logit only
    on rows whose bits in the tile are neither all 1 nor all 0 (mask_rows)."""
    if start_n + BLOCK_N > seen_by_all:
        offs_n = start_n + gl.arange(0, BLOCK_N, layout=col_layout)
        keep = offs_n[None, :] < hi
        if IS_CAUSAL:
            keep = keep & (offs_n[None, :] <= q_pos[:, None])
        if HAS_MASK:
            row_ptr, row_bit, row_ok, _, _, _ = custom
            row_layout: gl.constexpr = gl.SliceLayout(1, col_layout.parent)
            full, empty = mask_rows(custom, start_n, hi, BLOCK_N, row_layout)
            # rows past the request's are left unmasked where that saves work: their output is not stored
            if gl.min((full | ~row_ok).to(gl.int32), 0) == 1:  # every row keeps the whole tile
                s = gl.where(keep, s, float("-inf"))
            elif gl.min((empty | ~row_ok).to(gl.int32), 0) == 1:  # no row keeps any key of it
                s = gl.full_like(s, float("-inf"))
            else:
                kept = keep & (row_ok & ~empty)[:, None]
                bit = row_bit[:, None] + offs_n[None, :]
                byte = gl.load(row_ptr[:, None] + (bit >> 3), mask=kept & ~full[:, None], other=255).to(gl.int32)
                s = gl.where(kept & (((byte >> (bit & 7)) & 1) != 0), s, float("-inf"))
        else:
            s = gl.where(keep, s, float("-inf"))
    if HAS_WINDOW:
        if start_n < window_all:
            offs_n = start_n + gl.arange(0, BLOCK_N, layout=col_layout)
            s = gl.where(offs_n[None, :] >= (q_pos - window_left)[:, None], s, float("-inf"))
    return s


@gluon.jit
def soft_cap(s, softcap_in, HAS_SOFTCAP: gl.constexpr):
    """Raw q.k -> tanh(q.k sm_scale / cap) with the soft cap (the caller's qk_scale is then
    cap log2(e)), one tanh.approx per logit as FA3 and FlashInfer do; as it is without."""
    if HAS_SOFTCAP:
        s = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [s * softcap_in], dtype=gl.float32,
                                      is_pure=True, pack=1)
    return s


@gluon.jit
def softmax_step(s, m_i, l_i, qk_scale):
    """One online-softmax step over raw q.k: new max and sum (log2 units), the accumulator's
    rescale factor, p = 2^(s qk_scale - m) (one FMA and one exp2 per logit). Rows that have seen
    no key yet (all -inf) keep m = -inf and get p = 0."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s * qk_scale - m_safe[:, None])
    return m_new, l_i * alpha + gl.sum(p, 1), alpha, p


@gluon.jit
def p_operand(p, dtype: gl.constexpr, p_layout: gl.constexpr, FP8: gl.constexpr):
    """P [64, BLOCK_N] (S's accumulator layout) as P V's register operand. For fp8 the columns
    are reordered so that each thread's values are already where the operand wants them: in
    every 16 columns, column g 8 + 2 t + j (the accumulator: chunk g, lane t mod 4, register j)
    becomes 4 t + 2 g + j (the fp8 operand's 4 bytes per register); V^T's columns are stored in
    that order (kernels/kv_prepass.py)."""
    p = p.to(dtype)
    if FP8:
        BLOCK_N: gl.constexpr = p.shape[1]
        p = p.reshape([64, BLOCK_N // 16, 2, 4, 2]).permute((0, 1, 3, 2, 4)).reshape([64, BLOCK_N])
    return gl.convert_layout(p, p_layout)


@gluon.jit
def pv_wait(acc, p, FP8: gl.constexpr):
    """Wait for P V. p, its register operand, stays live until then; an 8-bit p cannot be a
    dependency of the wait (Triton 3.6), and ptxas itself keeps an in-flight wgmma's registers
    (it would serialise the wgmma and warn; sm_90 ptxas gives no such warning for this kernel)."""
    if FP8:
        acc = warpgroup_mma_wait(0, deps=(acc,))
    else:
        acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    return acc, p


@gluon.jit
def v_operand(v_tile, FP8: gl.constexpr):
    """P V's B operand, [BLOCK_N, HEAD_DIM]: the V tile, or for fp8 (whose wgmma reads both
    operands K-major) the V^T tile [HEAD_DIM, BLOCK_N] seen transposed."""
    if FP8:
        return v_tile.permute((1, 0))
    else:
        return v_tile


@gluon.jit
def zero_tail(smem, n_valid, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Zero rows [n_valid, BLOCK_N) of a K/V tile in shared memory, before this warpgroup's
    wgmma reads it (the other warpgroup writes the same values)."""
    if n_valid < BLOCK_N:
        layout: gl.constexpr = global_io_layout(HEAD_DIM, 4)
        rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
        tile = smem.load(layout)
        smem.store(gl.where((rows < n_valid)[:, None], tile, gl.zeros_like(tile)))
        fence_async_shared()
        gl.thread_barrier()


@gluon.jit
def store_rows(o_ptr, lse_ptr, out, lse, rows, head, offs_d, mask_o, mask_m, stride_on, stride_oh, stride_ln, stride_lh,
               WRITE_LSE: gl.constexpr):
    """A warpgroup's out [64, head dim] (global_io_layout) into rows `rows` and heads `head` of
    o_ptr (the output's tokens, or a split's partial rows), and (WRITE_LSE) its lse beside it."""
    gl.store(o_ptr + rows[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask_o)
    if WRITE_LSE:
        gl.store(lse_ptr + rows * stride_ln + head * stride_lh, lse, mask=mask_m)
