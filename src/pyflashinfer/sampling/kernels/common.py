"""Building blocks shared by the sampling kernels: random numbers, order keys, tiles, and the
draws: a one-pass weighted reservoir over tiles (speculative sampling), and the inverse-CDF
draw over per-lane weights (lane_draw) that the filtered samplers use.

Values ("v") are what a token is sampled in proportion to: the probability itself, or
exp(logit - row max) when the input is logits (so the largest value is 1.0).
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
BIG_INDEX = tl.constexpr(2147483647)


@triton.jit
def uniform4(seed, offset, stream, counter):
    """Four independent U[0, 1) draws (24-bit grid) from Philox-4x32-10.

    Key = `seed` (int64), counter = (offset low, offset high, stream, counter): a call that
    moves `offset` on never reuses a counter of an earlier call.
    """
    c0 = offset.to(tl.uint32)
    c1 = (offset >> 32).to(tl.uint32)
    ctr = (tl.zeros_like(stream) + counter).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, stream.to(tl.uint32), ctr)
    scale = 5.9604644775390625e-08  # 2**-24
    return ((r0 >> 8).to(tl.float32) * scale, (r1 >> 8).to(tl.float32) * scale,
            (r2 >> 8).to(tl.float32) * scale, (r3 >> 8).to(tl.float32) * scale)


@triton.jit
def order_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (-inf < ... < -0 < +0 < ... < +inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    flip = tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000).to(tl.uint32)
    return bits ^ flip


@triton.jit
def key_value(key):
    """The fp32 whose order_key is `key` (uint32): order_key's inverse."""
    flip = tl.where((key >> 31) != 0, 0x80000000, 0xFFFFFFFF).to(tl.uint32)
    return (key ^ flip).to(tl.float32, bitcast=True)


@triton.jit
def bit_lerp(a, b, j):
    """The float j quarters of the way from non-negative a to b >= a in bit space (a when they
    are adjacent)."""
    a_bits = tl.maximum(a, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    b_bits = b.to(tl.int32, bitcast=True).to(tl.int64)
    return (a_bits + (b_bits - a_bits) * j // 4).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def float_below(t):
    """The largest float below t > 0, or -1.0 when t <= 0 (so that `v > result` <=> `v >= t`)."""
    bits = t.to(tl.int32, bitcast=True)
    prev = (tl.maximum(bits, 1) - 1).to(tl.float32, bitcast=True)
    return tl.where(t > 0.0, prev, -1.0)


@triton.jit
def load_tile(x_ptr, row_off, cols, mask, IS_LOGITS: tl.constexpr):
    """[ROWS, BLOCK] tile of raw inputs as fp32 (masked entries: -inf logits, 0 probabilities).
    `cols` is [1, BLOCK] or [ROWS, BLOCK]; `row_off` the int64 offset of each row."""
    ptrs = x_ptr + row_off[:, None] + cols
    if IS_LOGITS:
        x = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def tile_values(x, mask, row_max, IS_LOGITS: tl.constexpr):
    """Sampling weights of a tile: probabilities (NaN and negatives count as 0), or
    exp(logit - row_max) for logits. Zero outside `mask`."""
    if IS_LOGITS:
        v = tl.exp2((x - row_max[:, None]) * LOG2E)
        keep = mask & (x > float("-inf"))
    else:
        v = x
        keep = mask & (x > 0.0)
    return tl.where(keep, v, 0.0)


@triton.jit
def reservoir_step(block_mass, total, tile, residual, u, j):
    """Weighted reservoir over tiles: after tile j, the kept tile is j with probability
    block_mass / (total + block_mass). `residual` is the uniform left for the draw inside the
    kept tile (u * total / block_mass when kept), so one uniform per tile suffices."""
    total = total + block_mass
    take = u * total < block_mass
    tile = tl.where(take, j, tile)
    residual = tl.where(take, u * total / tl.where(take, block_mass, 1.0), residual)
    return total, tile, residual


@triton.jit
def row_param(ptr, scalar, rows, row_mask, PER_ROW: tl.constexpr, dtype: tl.constexpr, ROWS: tl.constexpr):
    """A filter parameter per row: read from ptr[rows] (PER_ROW), else the scalar."""
    if PER_ROW:
        val = tl.load(ptr + rows, mask=row_mask, other=0).to(dtype)
    else:
        val = tl.zeros([ROWS], dtype=dtype) + scalar
    return val


@triton.jit
def source_rows(indices_ptr, rows, row_mask, HAS_INDICES: tl.constexpr):
    """The input row (int64) each output row reads: indices[rows], or rows itself."""
    if HAS_INDICES:
        src = tl.load(indices_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    else:
        src = rows.to(tl.int64)
    return src


@triton.jit
def rows_left(done_ptr, rows, row_mask, HAS_DONE: tl.constexpr):
    """The rows still to do: with HAS_DONE, those that an earlier launch (topk_sampling_kernel)
    did not finish (done_ptr[row] == 0)."""
    if HAS_DONE:
        row_mask = row_mask & (tl.load(done_ptr + rows, mask=row_mask, other=1) == 0)
    return row_mask


@triton.jit
def lane_draw(x_ptr, row_off, row_mask, vocab, lane_w, u, row_max, lo, hi, thr_key,
              IS_LOGITS: tl.constexpr, HAS_SUPPORT: tl.constexpr, BLOCK: tl.constexpr, TILES: tl.constexpr):
    """Draw a token with probability proportional to its weight in (lo, hi), by inverse CDF
    over the tokens in lane order: lane j holds the tokens j, j + BLOCK, j + 2 BLOCK, ...
    (the columns one thread position sees while streaming the row), and lane_w [ROWS, BLOCK]
    is each lane's summed weight in (lo, hi), accumulated by the pass without any reduction
    per tile. The lane is found by one prefix sum over the lanes; the token inside it by a
    prefix sum over its at most TILES tokens, read again. Only tokens of positive weight in
    (lo, hi) (and in the top-k support when HAS_SUPPORT) are eligible. Returns (token, value);
    token -1 where the row has none."""
    lanes = tl.arange(0, BLOCK)[None, :]
    csum = tl.cumsum(lane_w, axis=1)
    target = u * tl.max(csum, axis=1)  # below the scan's own total, so some lane's prefix passes it
    lane = tl.min(tl.where((csum > target[:, None]) & (lane_w > 0.0), lanes, BIG_INDEX), axis=1)
    lane = tl.where(lane == BIG_INDEX, -1, lane)
    at = lanes == lane[:, None]
    here = tl.sum(tl.where(at, lane_w, 0.0), axis=1)
    before = tl.sum(tl.where(at, csum, 0.0), axis=1) - here
    residual = tl.minimum(tl.maximum((target - before) / tl.where(here > 0.0, here, 1.0), 0.0), 1.0)

    cols = tl.maximum(lane, 0)[:, None] + tl.arange(0, TILES)[None, :] * BLOCK
    mask = (row_mask & (lane >= 0))[:, None] & (cols < vocab)
    x = load_tile(x_ptr, row_off, cols, mask, IS_LOGITS)
    if HAS_SUPPORT:
        mask = mask & (order_key(x) >= thr_key[:, None])
    v = tile_values(x, mask, row_max, IS_LOGITS)
    w = tl.where((v > lo[:, None]) & (v < hi[:, None]), v, 0.0)
    # prefix sums over the lane's few tokens as a triangular sum (tl.cumsum over so short an
    # axis crashes Triton 3.6's sm_90 scan lowering)
    steps = tl.arange(0, TILES)
    c = tl.sum(tl.where(steps[None, None, :] <= steps[None, :, None], w[:, None, :], 0.0), axis=2)
    cut = residual * tl.max(c, axis=1)
    first = tl.min(tl.where((c > cut[:, None]) & (w > 0.0), cols, BIG_INDEX), axis=1)
    last = tl.max(tl.where(w > 0.0, cols, -1), axis=1)
    token = tl.where(first == BIG_INDEX, last, first)
    value = tl.sum(tl.where(cols == token[:, None], w, 0.0), axis=1)
    return token, value
