"""V^T of a batch's requests, for the fp8 Hopper prefill (kernels/prefill_hopper.py).

fp8 wgmma reads both operands K-major, so P V needs V with the KV axis contiguous. This pass
writes each request's V (ragged, or gathered from its pages) as vt [H_kv, head_dim, T]: request
b's token t of head h at vt[h, :, vt_column(b) + 16 (t // 16) + perm16(t mod 16)], where
perm16(8 g + 2 i + j) = 4 i + 2 g + j is the column order in which the Hopper kernel holds P
(its _p_operand). Columns [kv_len, round16(kv_len)) of a request hold zeros; each request starts
16-aligned (the copy engine's alignment) with a gap of 32 after the previous one, so
T = round16(tokens) + 32 batch (launch.vt_columns), tokens being the ragged KV's length or
pages x page size.
"""
import triton
import triton.language as tl


@triton.jit
def vt_column(kv_start, req, PAGE_SIZE: tl.constexpr):
    """First V^T column of request req whose KV starts at kv_start (tokens, or pages when
    PAGE_SIZE > 0). kernels/prefill_hopper.py _vt_column is the same formula."""
    TOKENS_PER_ENTRY: tl.constexpr = PAGE_SIZE if PAGE_SIZE > 0 else 1
    return (kv_start * TOKENS_PER_ENTRY + 15) // 16 * 16 + 32 * req


@triton.jit
def transpose_v_kernel(
    v_ptr, vt_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr,
    stride_vpage, stride_vn, stride_vh, stride_vth, stride_vtd,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, PAGE_SIZE: tl.constexpr,
):
    """Programs (request, p, KV head): V^T column tiles p, p + P, ... (P programs on axis 1) of
    the request, each column read as one V row (the token that P's order puts there) and the
    tile written as contiguous bytes. A CUDA graph replays the grid of its first plan; the loop
    covers a later plan's longer requests."""
    req = tl.program_id(0)
    pid_h = tl.program_id(2).to(tl.int64)
    kv_len = tl.load(seq_lens_ptr + req)
    kv_start = tl.load(kv_indptr_ptr + req)
    col0 = tl.multiple_of(vt_column(kv_start, req, PAGE_SIZE), 16)
    offs_d = tl.arange(0, HEAD_DIM)
    for c in range(tl.program_id(1) * BLOCK_T, kv_len, tl.num_programs(1) * BLOCK_T):
        offs_c = c + tl.arange(0, BLOCK_T)  # columns of the request
        low = offs_c % 16  # = 4 i + 2 g + j: the token 8 g + 2 i + j of these 16
        offs_t = offs_c - low + low // 2 % 2 * 8 + low // 4 * 2 + low % 2
        mask_t = offs_t < kv_len
        if PAGE_SIZE == 0:
            rows = (kv_start + offs_t).to(tl.int64) * stride_vn
        else:
            page = tl.load(kv_indices_ptr + kv_start + offs_t // PAGE_SIZE, mask=mask_t, other=0).to(tl.int64)
            rows = page * stride_vpage + (offs_t % PAGE_SIZE) * stride_vn
        v = tl.load(v_ptr + pid_h * stride_vh + rows[:, None] + offs_d[None, :], mask=mask_t[:, None], other=0.0)
        tl.store(vt_ptr + pid_h * stride_vth + offs_d[:, None] * stride_vtd + (col0 + offs_c)[None, :], tl.trans(v),
                 mask=(offs_c < (kv_len + 15) // 16 * 16)[None, :])
