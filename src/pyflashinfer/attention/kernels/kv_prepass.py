"""Passes that rewrite a batch's K/V for the Hopper prefill kernel (kernels/prefill_hopper.py),
one launch before it.

Both write each request's tokens (ragged, or gathered from its pages) to a buffer in which the
request starts at request_base (16-aligned, the copy engine's alignment, with a gap of 32 after
the previous request): T = round16(tokens) + 32 batch entries in all (launch.prepass_len), tokens
being the ragged KV's length or pages x page size.

- transpose_v_kernel, for fp8 q/k/v: fp8 wgmma reads both operands K-major, so P V needs V
  with the KV axis contiguous: vt [H_kv, head_dim, T], request b's token t of head h at
  vt[h, :, base(b) + 16 (t // 16) + perm16(t mod 16)], where perm16(8 g + 2 i + j) = 4 i + 2 g + j
  is the column order in which the kernel holds P (prefill_hopper_tile.p_operand). Columns [kv_len,
  round16(kv_len)) of a request hold zeros.
- copy_kv_kernel, for 16-bit q over an fp8 KV, or over a 16-bit paged KV whose pages the kernel
  does not copy itself (launch.kv_copied): K and V in q's dtype, kc/vc [T, H_kv, head_dim], token
  t of request b at row base(b) + t (fp8 scales stay with the attention: k_scale in sm_scale,
  v_scale in the epilogue).

A program handles tiles p, p + P, ... of its request (P programs on grid axis 1): a CUDA graph
replays the grid of its first plan, and the loop covers a later plan's longer requests.
"""
import triton
import triton.language as tl


@triton.jit
def request_base(kv_start, req, PAGE_SIZE: tl.constexpr):
    """First entry of request req whose KV starts at kv_start (tokens, or pages when
    PAGE_SIZE > 0). kernels/prefill_hopper.py _request_base is the same formula."""
    TOKENS_PER_ENTRY: tl.constexpr = PAGE_SIZE if PAGE_SIZE > 0 else 1
    return (kv_start * TOKENS_PER_ENTRY + 15) // 16 * 16 + 32 * req


@triton.jit
def _rows(kv_start, kv_indices_ptr, offs_t, mask_t, stride_page, stride_n, PAGE_SIZE: tl.constexpr):
    """Element offsets of tokens offs_t of a request in a ragged KV or a paged cache."""
    if PAGE_SIZE == 0:
        return (kv_start + offs_t).to(tl.int64) * stride_n
    else:
        page = tl.load(kv_indices_ptr + kv_start + offs_t // PAGE_SIZE, mask=mask_t, other=0).to(tl.int64)
        return page * stride_page + (offs_t % PAGE_SIZE) * stride_n


@triton.jit
def transpose_v_kernel(
    v_ptr, vt_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr,
    stride_vpage, stride_vn, stride_vh, stride_vth, stride_vtd,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, PAGE_SIZE: tl.constexpr,
):
    """Program (request, p, KV head): V^T column tiles of the request, each column read as one
    V row (the token that P's order puts there), the tile written as contiguous bytes."""
    req = tl.program_id(0)
    pid_h = tl.program_id(2).to(tl.int64)
    kv_len = tl.load(seq_lens_ptr + req)
    kv_start = tl.load(kv_indptr_ptr + req)
    col0 = tl.multiple_of(request_base(kv_start, req, PAGE_SIZE), 16)
    offs_d = tl.arange(0, HEAD_DIM)
    for c in range(tl.program_id(1) * BLOCK_T, kv_len, tl.num_programs(1) * BLOCK_T):
        offs_c = c + tl.arange(0, BLOCK_T)  # columns of the request
        low = offs_c % 16  # = 4 i + 2 g + j: the token 8 g + 2 i + j of these 16
        offs_t = offs_c - low + low // 2 % 2 * 8 + low // 4 * 2 + low % 2
        mask_t = offs_t < kv_len
        rows = _rows(kv_start, kv_indices_ptr, offs_t, mask_t, stride_vpage, stride_vn, PAGE_SIZE)
        v = tl.load(v_ptr + pid_h * stride_vh + rows[:, None] + offs_d[None, :], mask=mask_t[:, None], other=0.0)
        tl.store(vt_ptr + pid_h * stride_vth + offs_d[:, None] * stride_vtd + (col0 + offs_c)[None, :], tl.trans(v),
                 mask=(offs_c < (kv_len + 15) // 16 * 16)[None, :])


@triton.jit(do_not_specialize=["window_left"])
def copy_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr, qo_indptr_ptr,
    stride_kpage, stride_kn, stride_kh, stride_vpage, stride_vn, stride_vh, stride_cn, stride_ch, window_left,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, PAGE_SIZE: tl.constexpr, WINDOW_ALIGN: tl.constexpr,
):
    """Program (request, p, KV head): token tiles of the request's K and V, converted to kc's
    dtype (a plain copy when it is theirs). With a sliding window (WINDOW_ALIGN > 0) only from
    the plan's window_start on (plan.py: the first key any of the request's rows sees, rounded
    down to WINDOW_ALIGN, the plan's KV tile): the attention reads nothing before it."""
    req = tl.program_id(0)
    pid_h = tl.program_id(2).to(tl.int64)
    kv_len = tl.load(seq_lens_ptr + req)
    kv_start = tl.load(kv_indptr_ptr + req)
    row0 = request_base(kv_start, req, PAGE_SIZE)
    offs_d = tl.arange(0, HEAD_DIM)
    dtype = kc_ptr.dtype.element_ty
    first = 0
    if WINDOW_ALIGN > 0:
        qo_len = tl.load(qo_indptr_ptr + req + 1) - tl.load(qo_indptr_ptr + req)
        first = tl.maximum(kv_len - qo_len - window_left, 0) // WINDOW_ALIGN * WINDOW_ALIGN
    for t in range(first + tl.program_id(1) * BLOCK_T, kv_len, tl.num_programs(1) * BLOCK_T):
        offs_t = t + tl.arange(0, BLOCK_T)
        mask = (offs_t < kv_len)[:, None]
        dst = (row0 + offs_t).to(tl.int64)[:, None] * stride_cn + pid_h * stride_ch + offs_d[None, :]
        rows = _rows(kv_start, kv_indices_ptr, offs_t, offs_t < kv_len, stride_kpage, stride_kn, PAGE_SIZE)
        k = tl.load(k_ptr + pid_h * stride_kh + rows[:, None] + offs_d[None, :], mask=mask)
        tl.store(kc_ptr + dst, k.to(tl.float32).to(dtype), mask=mask)
        rows = _rows(kv_start, kv_indices_ptr, offs_t, offs_t < kv_len, stride_vpage, stride_vn, PAGE_SIZE)
        v = tl.load(v_ptr + pid_h * stride_vh + rows[:, None] + offs_d[None, :], mask=mask)
        tl.store(vc_ptr + dst, v.to(tl.float32).to(dtype), mask=mask)
