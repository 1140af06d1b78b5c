"""Row softmax with temperature (FlashInfer `softmax`)."""
import triton
import triton.language as tl

from .common import LOG2E, load_tile


@triton.jit(do_not_specialize=["batch", "temperature"])
def softmax_kernel(
    x_ptr, out_ptr, temp_ptr,
    stride_x, stride_out, batch, vocab, temperature,
    HAS_TEMP_TENSOR: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = softmax(x / temperature) per row, fp32; online max/sum, then one normalising pass.
    -inf logits give 0; a row of only -inf gives NaN (as torch.softmax)."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_mask = rows < batch
    row_off = rows.to(tl.int64) * stride_x
    out_off = rows.to(tl.int64) * stride_out
    if HAS_TEMP_TENSOR:
        scale = 1.0 / tl.load(temp_ptr + rows, mask=row_mask, other=1.0).to(tl.float32)
    else:
        scale = tl.zeros([ROWS], dtype=tl.float32) + 1.0 / temperature
    offs = tl.arange(0, BLOCK)[None, :]

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        s = load_tile(x_ptr, row_off, cols, mask, True) * scale[:, None]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2((m_i - m_safe) * LOG2E) + tl.sum(tl.exp2((s - m_safe[:, None]) * LOG2E), axis=1)
        m_i = m_new

    m_i = tl.where(row_mask, m_i, 0.0)  # padding rows past the batch: keep them finite
    inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)  # a row of only -inf: NaN from (-inf) - (-inf)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        mask = row_mask[:, None] & (cols < vocab)
        s = load_tile(x_ptr, row_off, cols, mask, True) * scale[:, None]
        p = tl.exp2((s - m_i[:, None]) * LOG2E) * inv_l[:, None]
        tl.store(out_ptr + out_off[:, None] + cols, p, mask=mask)
