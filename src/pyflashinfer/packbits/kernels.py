"""Bit packing (numpy.packbits, per segment): @triton.jit code only."""
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["n_bytes", "n_bits"])
def packbits_kernel(x_ptr, out_ptr, seg_ptr, indptr_ptr, new_indptr_ptr, n_bytes, n_bits,
                    HAS_SEGMENTS: tl.constexpr, LITTLE: tl.constexpr, BLOCK: tl.constexpr):
    """out[j] = 8 bits of x (nonzero -> 1) starting at bit 8 * j of its segment, zero-padded at
    the segment's end; bit t of the byte has weight 128 >> t ("big") or 1 << t ("little")."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_bytes
    if HAS_SEGMENTS:
        seg = tl.load(seg_ptr + offs, mask=mask, other=0)
        src_start = tl.load(indptr_ptr + seg, mask=mask, other=0).to(tl.int64)
        src_end = tl.load(indptr_ptr + seg + 1, mask=mask, other=0).to(tl.int64)
        dst_start = tl.load(new_indptr_ptr + seg, mask=mask, other=0).to(tl.int64)
        first = src_start + 8 * (offs.to(tl.int64) - dst_start)
    else:
        src_end = tl.zeros([BLOCK], dtype=tl.int64) + n_bits
        first = 8 * offs.to(tl.int64)
    t = tl.arange(0, 8)
    pos = first[:, None] + t[None, :]
    valid = mask[:, None] & (pos < src_end[:, None])
    bits = (tl.load(x_ptr + pos, mask=valid, other=0) != 0).to(tl.int32)
    if LITTLE:
        weight = 1 << t
    else:
        weight = 128 >> t
    byte = tl.sum(bits * weight[None, :], axis=1)
    tl.store(out_ptr + offs, byte.to(tl.uint8), mask=mask)
