"""Top-k by radix select (no sort), and the kernel that renormalises or masks with it.

The k largest entries of a row are those whose order key (order_key: the float bits, flipped
so that unsigned order is float order) is at least the key of the k-th largest. The radix
select finds that key 8 bits at a time with a 256-bin histogram of the entries that share the
bits found so far: at most 4 passes over the row, fewer when a whole bucket falls inside the
top k (then the lower bits do not matter). Entries tied with the k-th largest are all kept.
"""
import triton
import triton.language as tl

from .common import BIG_INDEX, key_value, load_tile, order_key, row_param, rows_left, source_rows, tile_values


@triton.jit
def _digit_bucket(key, mask, prefix, DIGIT: tl.constexpr, RADIX_BITS: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Histogram inputs of radix digit DIGIT for keys [ROWS, BLOCK]: each key's bucket (offset
    by its row's bins) and the mask of the keys whose higher digits are the prefix found so far."""
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    if DIGIT > 0:
        high: tl.constexpr = 32 - RADIX_BITS * DIGIT
        mask = mask & ((key >> high) == (prefix >> high)[:, None])
    row_bins = (tl.arange(0, ROWS) * NUM_BINS)[:, None]
    bucket = ((key >> (32 - RADIX_BITS * (DIGIT + 1))) & (NUM_BINS - 1)).to(tl.int32) + row_bins
    return tl.reshape(bucket, [ROWS * BLOCK]), tl.reshape(mask, [ROWS * BLOCK])


@triton.jit
def _digit_pick(hist, prefix, k_left, found, DIGIT: tl.constexpr, RADIX_BITS: tl.constexpr, ROWS: tl.constexpr):
    """One radix-select step from digit DIGIT's [ROWS * 2**RADIX_BITS] histogram: the bucket that
    holds the k_left-th largest key becomes the digit of `prefix`; a row whose whole bucket lies
    in the top set is `found` (its lower digits do not matter)."""
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    bins = tl.arange(0, NUM_BINS)
    hist2 = tl.reshape(hist, [ROWS, NUM_BINS])
    above = tl.sum(hist2, axis=1)[:, None] - tl.cumsum(hist2, axis=1)  # entries in higher buckets
    at_or_above = above + hist2
    pick = tl.max(tl.where(at_or_above >= k_left[:, None], bins[None, :], -1), axis=1)
    in_pick = tl.sum(tl.where(bins[None, :] == pick[:, None], hist2, 0), axis=1)
    above_pick = tl.sum(tl.where(bins[None, :] == pick[:, None], above, 0), axis=1)
    active = ~found
    k_left = tl.where(active, k_left - above_pick, k_left)
    digit_bits = tl.maximum(pick, 0).to(tl.uint32) << (32 - RADIX_BITS * (DIGIT + 1))
    prefix = tl.where(active, prefix | digit_bits, prefix)
    found = found | (active & (in_pick == k_left))
    return prefix, k_left, found


@triton.jit
def topk_threshold(x_ptr, row_off, row_mask, vocab, k, IS_LOGITS: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Per row, the smallest order key of the top-k set: keep `order_key(x) >= result`.
    Rows with k <= 0 or k >= vocab keep everything (result 0). RADIX_BITS bits per pass: 8 on
    the GPU (one row, 256 bins); fewer with many rows per program, whose ROWS x 2**RADIX_BITS
    bins would make the histogram slow to compile."""
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    offs = tl.arange(0, BLOCK)[None, :]
    prefix = tl.zeros([ROWS], dtype=tl.uint32)
    k_left = k
    found = (k <= 0) | (k >= vocab) | (~row_mask)
    for digit in tl.static_range(32 // RADIX_BITS):
        if tl.max((~found).to(tl.int32), axis=0) > 0:
            hist = tl.zeros([ROWS * NUM_BINS], dtype=tl.int32)
            for start in range(0, vocab, BLOCK):
                cols = start + offs
                mask = row_mask[:, None] & (cols < vocab) & (~found)[:, None]
                key = order_key(load_tile(x_ptr, row_off, cols, mask, IS_LOGITS))
                bucket, mask = _digit_bucket(key, mask, prefix, digit, RADIX_BITS, ROWS, BLOCK)
                hist += tl.histogram(bucket, ROWS * NUM_BINS, mask=mask)
            prefix, k_left, found = _digit_pick(hist, prefix, k_left, found, digit, RADIX_BITS, ROWS)
    return prefix


@triton.jit
def _kth_key_bound(keys, k, ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Per row of keys [ROWS, BLOCK] (in registers, k in 1..BLOCK), a key t at most the k-th
    largest with at least k keys >= t (radix select, as topk_threshold)."""
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    prefix = tl.zeros([ROWS], dtype=tl.uint32)
    k_left = k
    found = k <= 0
    every = tl.full([ROWS, BLOCK], 1, dtype=tl.int1)
    for digit in tl.static_range(32 // RADIX_BITS):
        bucket, mask = _digit_bucket(keys, every & (~found)[:, None], prefix, digit, RADIX_BITS, ROWS, BLOCK)
        hist = tl.histogram(bucket, ROWS * NUM_BINS, mask=mask)
        prefix, k_left, found = _digit_pick(hist, prefix, k_left, found, digit, RADIX_BITS, ROWS)
    return prefix


@triton.jit
def topk_candidates(x_ptr, row_off, rows, row_mask, vocab, k, slots_ptr, count_ptr, IS_LOGITS: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr, SLOTS: tl.constexpr):
    """Gather a superset of the top k of each row in two passes; eligible rows have k in
    1..min(BLOCK, SLOTS) and below vocab (the others: k <= 0 or k >= vocab filter nothing).

    Pass 1 keeps each lane's largest key (lane j: the tokens j, j + BLOCK, ...); t, the k-th
    largest of those BLOCK maxima, is a lower bound of the row's k-th largest (k lanes hold a
    token >= t), and few tokens reach it: about k for tokens in no particular order, at most
    k x (tokens per lane) when no keys tie. Pass 2 writes every token >= t, as
    (order key << 32 | BIG_INDEX - token), into the row's SLOTS slots of slots_ptr, a slot per
    token from an atomic counter (count_ptr[row]); the slots' order does not matter to
    rank_candidates. Returns the row's slots, its candidate count, and `ok`: eligible and
    all candidates fitted (the other rows need topk_threshold)."""
    eligible = row_mask & (k > 0) & (k < vocab) & (k <= BLOCK) & (k <= SLOTS)
    offs = tl.arange(0, BLOCK)[None, :]
    lane_key = tl.zeros([ROWS, BLOCK], dtype=tl.uint32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = eligible[:, None] & (cols < vocab)
        key = order_key(load_tile(x_ptr, row_off, cols, mask, IS_LOGITS))
        lane_key = tl.maximum(lane_key, tl.where(mask, key, 0))
    t = _kth_key_bound(lane_key, k, ROWS, BLOCK, RADIX_BITS)

    slots = slots_ptr + rows.to(tl.int64) * SLOTS
    counter = count_ptr + rows[:, None] + tl.zeros([1, BLOCK], dtype=tl.int32)
    tl.store(count_ptr + rows, tl.zeros([ROWS], dtype=tl.int32), mask=eligible)
    tl.debug_barrier()
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = eligible[:, None] & (cols < vocab)
        key = order_key(load_tile(x_ptr, row_off, cols, mask, IS_LOGITS))
        hit = mask & (key >= t[:, None])
        slot = tl.atomic_add(counter, 1, mask=hit, sem="relaxed", scope="cta")
        packed = (key.to(tl.uint64) << 32) | (-cols + BIG_INDEX).to(tl.uint64)
        tl.store(slots[:, None] + slot, packed, mask=hit & (slot < SLOTS))
    tl.debug_barrier()
    count = tl.load(count_ptr + rows, mask=eligible, other=0)
    return slots, count, eligible & (count <= SLOTS)


@triton.jit
def rank_candidates(slots, count, ok, IS_LOGITS: tl.constexpr, NEED_MASS: tl.constexpr, ROWS: tl.constexpr,
                    SLOTS: tl.constexpr, CHUNK: tl.constexpr):
    """Rank each row's candidates (topk_candidates) against each other, CHUNK at a time: no sort.

    Returns per slot [ROWS, SLOTS]: its token, order key, weight (tile_values, relative to the
    candidates' largest value; 0 outside `live`), `live` (holds a candidate of an ok row) and
    `larger`, the number of candidates with a larger key. With NEED_MASS also `above`, the weight
    of the candidates with a larger key, and `before`, the weight of those before it in the
    order (key descending, token ascending): a token's share of [0, total) for the draw."""
    pos = tl.arange(0, SLOTS)[None, :]
    live = ok[:, None] & (pos < count[:, None])
    packed = tl.load(slots[:, None] + pos, mask=live, other=0)
    keys = (packed >> 32).to(tl.uint32)
    val = key_value(keys)
    v_max = tl.max(tl.where(live, val, float("-inf")), axis=1)
    weight = tile_values(val, live, v_max, IS_LOGITS)
    larger = tl.zeros([ROWS, SLOTS], dtype=tl.int32)
    above = tl.zeros([ROWS, SLOTS], dtype=tl.float32)
    before = tl.zeros([ROWS, SLOTS], dtype=tl.float32)
    n = tl.max(tl.where(ok, count, 0), axis=0)
    for j0 in range(0, n, CHUNK):
        pj = j0 + tl.arange(0, CHUNK)[None, :]
        lj = ok[:, None] & (pj < count[:, None])
        pk = tl.load(slots[:, None] + pj, mask=lj, other=0)
        kj = (pk >> 32).to(tl.uint32)
        gt = lj[:, None, :] & (kj[:, None, :] > keys[:, :, None])  # [ROWS, SLOTS, CHUNK]
        larger += tl.sum(gt.to(tl.int32), axis=2)
        if NEED_MASS:
            wj = tile_values(key_value(kj), lj, v_max, IS_LOGITS)[:, None, :]
            above += tl.sum(tl.where(gt, wj, 0.0), axis=2)
            first = lj[:, None, :] & (pk[:, None, :] > packed[:, :, None])
            before += tl.sum(tl.where(first, wj, 0.0), axis=2)
    tokens = -(packed & BIG_INDEX).to(tl.int32) + BIG_INDEX
    return tokens, keys, weight, live, larger, above, before


@triton.jit
def _write_filtered(x_ptr, out_ptr, row_off, out_off, row_mask, vocab, thr, inv, RENORM: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The filtered rows: x * inv where order_key(x) >= thr (and x > 0), else 0 (RENORM);
    x where order_key(x) >= thr, else -inf (masking logits)."""
    offs = tl.arange(0, BLOCK)[None, :]
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        x = load_tile(x_ptr, row_off, cols, mask, not RENORM)
        keep = order_key(x) >= thr[:, None]
        if RENORM:
            y = tl.where(keep & (x > 0.0), x * inv[:, None], 0.0)
        else:
            y = tl.where(keep, x, float("-inf"))
        tl.store(out_ptr + out_off[:, None] + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


# stride_x, stride_out and vocab are specialised (16-divisible): 16-byte loads and stores.
@triton.jit(do_not_specialize=["batch", "top_k"])
def topk_filter_small_kernel(
    x_ptr, out_ptr, top_k_ptr, done_ptr, slots_ptr, count_ptr,
    stride_x, stride_out, batch, vocab, top_k,
    TOP_K_PER_ROW: tl.constexpr, RENORM: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr, SLOTS: tl.constexpr, CHUNK: tl.constexpr,
):
    """topk_filter_kernel's output for the rows whose top k come from their candidates
    (topk_candidates + rank_candidates: two passes, then the write); done[b] = 1 for those, 0
    for the rows left to topk_filter_kernel (k <= 0, k >= vocab, k > BLOCK, more than SLOTS
    candidates)."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = rows.to(tl.int64) * stride_x
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    slots, count, ok = topk_candidates(x_ptr, row_off, rows, row_mask, vocab, k, slots_ptr, count_ptr, not RENORM,
                                       ROWS, BLOCK, RADIX_BITS, SLOTS)
    _tokens, keys, w, live, larger, _above, _before = rank_candidates(slots, count, ok, not RENORM, False, ROWS,
                                                                      SLOTS, CHUNK)
    top = live & (larger < k[:, None])
    thr = tl.min(tl.where(top, keys, 0xFFFFFFFF), axis=1)
    inv = 1.0 / tl.maximum(tl.sum(tl.where(top, w, 0.0), axis=1), 1e-30)
    _write_filtered(x_ptr, out_ptr, row_off, rows.to(tl.int64) * stride_out, ok, vocab, thr, inv, RENORM, ROWS,
                    BLOCK)
    tl.store(done_ptr + rows, ok.to(tl.int32), mask=row_mask)


@triton.jit(do_not_specialize=["stride_x", "stride_out", "batch", "vocab", "top_k"])
def topk_filter_kernel(
    x_ptr, out_ptr, top_k_ptr, done_ptr,
    stride_x, stride_out, batch, vocab, top_k,
    TOP_K_PER_ROW: tl.constexpr, RENORM: tl.constexpr, HAS_DONE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """RENORM: out = p / sum(top-k p) on the top k, 0 elsewhere (top_k_renorm_probs).
    Otherwise: out = logit on the top k, -inf elsewhere (top_k_mask_logits). Output dtype = input.
    The top k by radix select (topk_threshold, up to four passes). HAS_DONE: only the rows that
    topk_filter_small_kernel left. A launch of its own: the radix select inlined after the
    candidates' path mis-renormalised 12 of 128 rows on the H100 (batch 128 x vocab 128256,
    N(0, 5^2) logits, every row forced onto the radix path; one-off A/B, 2026-12-02)."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows_left(done_ptr, rows, rows < batch, HAS_DONE)
    if tl.max(row_mask.to(tl.int32), axis=0) == 0:
        return
    row_off = rows.to(tl.int64) * stride_x
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    thr = topk_threshold(x_ptr, row_off, row_mask, vocab, k, not RENORM, ROWS, BLOCK, RADIX_BITS)
    inv = tl.zeros([ROWS], dtype=tl.float32)
    if RENORM:
        offs = tl.arange(0, BLOCK)[None, :]
        total = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            mask = row_mask[:, None] & (cols < vocab)
            x = load_tile(x_ptr, row_off, cols, mask, False)
            keep = mask & (order_key(x) >= thr[:, None]) & (x > 0.0)
            total += tl.sum(tl.where(keep, x, 0.0), axis=1)
        inv = 1.0 / tl.maximum(total, 1e-30)
    _write_filtered(x_ptr, out_ptr, row_off, rows.to(tl.int64) * stride_out, row_mask, vocab, thr, inv, RENORM, ROWS,
                    BLOCK)


@triton.jit(do_not_specialize=["stride_x", "batch", "vocab", "top_k"])
def topk_threshold_kernel(
    x_ptr, thr_ptr, indices_ptr, top_k_ptr, done_ptr,
    stride_x, batch, vocab, top_k,
    IS_LOGITS: tl.constexpr, HAS_INDICES: tl.constexpr, TOP_K_PER_ROW: tl.constexpr, HAS_DONE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """thr[b] = topk_threshold of row indices[b] (or b), as int32 bits: the top-k support of the
    sampling kernel (TOP_K_MODE 1). A launch of its own: inlined into the sampling kernel the
    radix select was miscompiled on sm_90 (Triton 3.6): per-row k, bf16 probabilities, the
    support took the (k+1)-th largest too in 2 of 100 random cases; this kernel, like
    topk_filter_kernel, was right in all of them. HAS_DONE: only the rows with done[b] == 0
    (those topk_sampling_kernel left)."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows_left(done_ptr, rows, rows < batch, HAS_DONE)
    src = source_rows(indices_ptr, rows, row_mask, HAS_INDICES)
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    thr = topk_threshold(x_ptr, src * stride_x, row_mask, vocab, k, IS_LOGITS, ROWS, BLOCK, RADIX_BITS)
    tl.store(thr_ptr + rows, thr.to(tl.int32, bitcast=True), mask=row_mask)
