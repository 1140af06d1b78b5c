"""Top-k by radix select (no sort), and the kernel that renormalises or masks with it.

The k largest entries of a row are those whose order key (order_key: the float bits, flipped
so that unsigned order is float order) is at least the key of the k-th largest. The radix
select finds that key 8 bits at a time with a 256-bin histogram of the entries that share the
bits found so far: at most 4 passes over the row, fewer when a whole bucket falls inside the
top k (then the lower bits do not matter). Entries tied with the k-th largest are all kept.
"""
import triton
import triton.language as tl

from .common import load_tile, order_key, row_param, source_rows


@triton.jit
def topk_threshold(x_ptr, row_off, row_mask, vocab, k, IS_LOGITS: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Per row, the smallest order key of the top-k set: keep `order_key(x) >= result`.
    Rows with k <= 0 or k >= vocab keep everything (result 0). RADIX_BITS bits per pass: 8 on
    the GPU (one row, 256 bins); fewer with many rows per program, whose ROWS x 2**RADIX_BITS
    bins would make the histogram slow to compile."""
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    bins = tl.arange(0, NUM_BINS)
    row_bins = (tl.arange(0, ROWS) * NUM_BINS)[:, None]
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
                if digit > 0:  # only the entries whose higher bits are the prefix found so far
                    high = 32 - RADIX_BITS * digit
                    mask = mask & ((key >> high) == (prefix >> high)[:, None])
                bucket = ((key >> (32 - RADIX_BITS * (digit + 1))) & (NUM_BINS - 1)).to(tl.int32) + row_bins
                hist += tl.histogram(tl.reshape(bucket, [ROWS * BLOCK]), ROWS * NUM_BINS,
                                     mask=tl.reshape(mask, [ROWS * BLOCK]))
            hist2 = tl.reshape(hist, [ROWS, NUM_BINS])
            above = tl.sum(hist2, axis=1)[:, None] - tl.cumsum(hist2, axis=1)  # entries in higher buckets
            at_or_above = above + hist2
            pick = tl.max(tl.where(at_or_above >= k_left[:, None], bins[None, :], -1), axis=1)
            in_pick = tl.sum(tl.where(bins[None, :] == pick[:, None], hist2, 0), axis=1)
            above_pick = tl.sum(tl.where(bins[None, :] == pick[:, None], above, 0), axis=1)
            active = ~found
            k_left = tl.where(active, k_left - above_pick, k_left)
            digit_bits = tl.maximum(pick, 0).to(tl.uint32) << (32 - RADIX_BITS * (digit + 1))
            prefix = tl.where(active, prefix | digit_bits, prefix)
            found = found | (active & (in_pick == k_left))
    return prefix


@triton.jit(do_not_specialize=["stride_x", "stride_out", "batch", "vocab", "top_k"])
def topk_filter_kernel(
    x_ptr, out_ptr, top_k_ptr,
    stride_x, stride_out, batch, vocab, top_k,
    TOP_K_PER_ROW: tl.constexpr, RENORM: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """RENORM: out = p / sum(top-k p) on the top k, 0 elsewhere (top_k_renorm_probs).
    Otherwise: out = logit on the top k, -inf elsewhere (top_k_mask_logits). Output dtype = input."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = rows.to(tl.int64) * stride_x
    out_off = rows.to(tl.int64) * stride_out
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    thr = topk_threshold(x_ptr, row_off, row_mask, vocab, k, not RENORM, ROWS, BLOCK, RADIX_BITS)
    offs = tl.arange(0, BLOCK)[None, :]

    if RENORM:
        total = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            mask = row_mask[:, None] & (cols < vocab)
            x = load_tile(x_ptr, row_off, cols, mask, False)
            keep = mask & (order_key(x) >= thr[:, None]) & (x > 0.0)
            total += tl.sum(tl.where(keep, x, 0.0), axis=1)
        inv = 1.0 / tl.maximum(total, 1e-30)

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


@triton.jit(do_not_specialize=["stride_x", "batch", "vocab", "top_k"])
def topk_threshold_kernel(
    x_ptr, thr_ptr, indices_ptr, top_k_ptr,
    stride_x, batch, vocab, top_k,
    IS_LOGITS: tl.constexpr, HAS_INDICES: tl.constexpr, TOP_K_PER_ROW: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """thr[b] = topk_threshold of row indices[b] (or b), as int32 bits: the top-k support of the
    sampling kernel (TOP_K_MODE 1). A launch of its own: inlined into the sampling kernel the
    radix select was miscompiled on sm_90 (Triton 3.6): per-row k, bf16 probabilities, the
    support took the (k+1)-th largest too in 2 of 100 random cases; this kernel, like
    topk_filter_kernel, was right in all of them."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    src = source_rows(indices_ptr, rows, row_mask, HAS_INDICES)
    k = row_param(top_k_ptr, top_k, rows, row_mask, TOP_K_PER_ROW, tl.int32, ROWS)
    thr = topk_threshold(x_ptr, src * stride_x, row_mask, vocab, k, IS_LOGITS, ROWS, BLOCK, RADIX_BITS)
    tl.store(thr_ptr + rows, thr.to(tl.int32, bitcast=True), mask=row_mask)
