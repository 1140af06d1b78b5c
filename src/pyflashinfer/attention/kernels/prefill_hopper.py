"""Hopper (sm_90) prefill in Gluon: TMA loads, wgmma, warp specialisation, P in registers.

The batch plan's work list drives it exactly as it drives the portable kernel (prefill.py):
axis 0 is a work item (request, row tile, kv start, kv end, partial slot), axis 1 the KV head,
and rows of a tile are packed (token, head-in-group) pairs of one KV head, so a GQA group
shares every K/V tile. It covers a ragged (contiguous) or paged (pages of 8-64 tokens) KV cache
with 16-bit or fp8 e4m3 q/k/v, or 16-bit q over a KV that a pre-pass copies into ragged rows of
q's dtype first (an fp8 KV, dequantized; pages of other sizes, gathered; COPY_PAGE >= 0 is the
source's page size: launch.kv_copied), equal head dims of 64 or 128 (or 256 with 16-bit q:
64-key tiles), causal or not, with a custom mask, a sliding window, a soft cap and sinks or
not (launch.hopper_prefill says when); everything else goes to the portable kernel.

K and V come as host-side tensor descriptors (launch.kv_desc_view), each a 2D view of every
KV head's rows (a head is a row offset, or a column offset for heads side by side in a token's
row), ragged or the whole paged cache: a tile past the request's kv_len reads other rows (or
zeros past the tensor), which the mask drops from S and zero_tail zeroes in V before P V.
Building descriptors on the device cost each program about 1.5 us before its first copy
(benchmarks/RESULTS.md).

A program owns a 64- or 128-row tile and runs as warp-specialised partitions:
- a producer warp copies K and V tiles through the copy engine into two-slot rings
  (mbarriers: ready per slot, and empty per slot, which every consumer releases);
- one consumer warpgroup per 64 rows loads its Q rows through registers into shared memory
  (while the first K/V copies are in flight), then runs S = Q K^T and O += P V on wgmma, P from registers, and
  S of tile j issued before P V of tile j - 1, so that its softmax could run under that
  product (FA3's intra-warpgroup overlap). It does not: in the sm_90 SASS of every variant,
  ptxas puts the wait for P V before the exp2s of tile j, so only the other warpgroup's
  products can run under a warpgroup's softmax. The warpgroups never wait for each other.
  FA3's ping-pong (the two warpgroups taking turns on the tensor cores through barriers)
  measured slower here (benchmarks/RESULTS.md).
- Logits stay raw q.k until one FMA per element folds in qk_scale = sm_scale * log2(e) inside
  the exp2 (with a soft cap: tanh(q.k sm_scale / cap) first, qk_scale = cap log2(e)); only
  tiles that the causal bound, the kv range or the window's edge cut are masked (with a custom
  mask, every tile: a warpgroup first reads the bytes that hold each row's bits of the tile to
  find rows whose bits are all 1 or all 0; only the other rows load a byte per logit, and a tile
  whose bits are all 1 or all 0 on every row is masked whole or not at all), and tiles wholly
  before a row tile's window are never loaded. Sinks join the state before it is
  finalized (a split's partial states get them in the merge).
- fp8: both products on fp8 tensor cores, P rounded to e4m3 (as FA3's fp8 path does). fp8
  wgmma reads both operands K-major, so P V reads V^T, which the launch writes first
  (kernels/kv_prepass.py) with its columns in the order in which each thread already holds P
  (p_operand: no shuffles). v_scale is folded into 1 / l.

Short work (launch.SHORT_TILE: 64 x 64 tiles, registers capped so that two programs share an
SM; or 128-row tiles whose rows see few keys, launch.PERSISTENT_KEYS) runs on persistent programs
where its units outnumber the programs that fit at once (PERSISTENT): program p takes one unit a
round of the work list (longest first, heads fastest), dealt back and forth (_dealt: p,
then 2 programs - 1 - p, ...), its producer copying the next unit's K/V while its consumers
finish the last, each consumer copying the next unit's Q rows (cp.async, into a second Q
buffer) and reading the work entry of the unit after it while it computes this one.

Measured on the H100 and the H200 with benchmarks/bench_prefill.py; see benchmarks/RESULTS.md.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)
from triton.language.core import _aggregate as aggregate

from .common import LOG2E
from .prefill_hopper_tile import (
    global_io_layout, mask_bits_layout, mask_row_starts, mask_tile, p_operand, pv_wait, soft_cap, softmax_step,
    store_rows, v_operand, zero_tail,
)


@aggregate
class _WsArgs:
    """What every unit of a program shares: shared memory, barriers, descriptors, the plan's work
    list and the launch's scalars."""
    q_smem: gl.shared_memory_descriptor
    k_smem: gl.shared_memory_descriptor
    v_smem: gl.shared_memory_descriptor
    k_ready: gl.shared_memory_descriptor
    v_ready: gl.shared_memory_descriptor
    k_empty: gl.shared_memory_descriptor
    v_empty: gl.shared_memory_descriptor
    k_desc: tma.tensor_descriptor
    v_desc: tma.tensor_descriptor
    work_ptr: gl.tensor
    qo_indptr_ptr: gl.tensor
    seq_lens_ptr: gl.tensor
    kv_indptr_ptr: gl.tensor
    stride_w: gl.tensor
    num_heads: gl.tensor
    stride_on: gl.tensor
    stride_oh: gl.tensor
    stride_ln: gl.tensor
    stride_lh: gl.tensor
    stride_pn: gl.tensor
    stride_ph: gl.tensor
    stride_pln: gl.tensor
    stride_plh: gl.tensor
    group_size: gl.tensor
    qk_scale: gl.tensor
    v_scale: gl.tensor
    window_left: gl.tensor
    softcap_in: gl.tensor
    HEAD_DIM: gl.constexpr
    BLOCK_M: gl.constexpr
    BLOCK_N: gl.constexpr
    STAGES: gl.constexpr
    IS_CAUSAL: gl.constexpr
    WRITE_LSE: gl.constexpr
    HAS_PARTIALS: gl.constexpr
    FP8: gl.constexpr
    HAS_WINDOW: gl.constexpr
    HAS_MASK: gl.constexpr
    HAS_SOFTCAP: gl.constexpr
    HAS_SINKS: gl.constexpr
    COPY_PAGE: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, q_smem, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, work_ptr,
                 qo_indptr_ptr, seq_lens_ptr, kv_indptr_ptr, stride_w, num_heads, stride_on, stride_oh, stride_ln,
                 stride_lh, stride_pn, stride_ph, stride_pln, stride_plh, group_size, qk_scale, v_scale, window_left,
                 softcap_in, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, IS_CAUSAL, WRITE_LSE, HAS_PARTIALS, FP8, HAS_WINDOW,
                 HAS_MASK, HAS_SOFTCAP, HAS_SINKS, COPY_PAGE):
        self.q_smem, self.k_smem, self.v_smem = q_smem, k_smem, v_smem
        self.k_ready, self.v_ready, self.k_empty, self.v_empty = k_ready, v_ready, k_empty, v_empty
        self.k_desc, self.v_desc = k_desc, v_desc
        self.work_ptr, self.qo_indptr_ptr, self.seq_lens_ptr = work_ptr, qo_indptr_ptr, seq_lens_ptr
        self.kv_indptr_ptr, self.stride_w, self.num_heads = kv_indptr_ptr, stride_w, num_heads
        self.stride_on, self.stride_oh, self.stride_ln, self.stride_lh = stride_on, stride_oh, stride_ln, stride_lh
        self.stride_pn, self.stride_ph, self.stride_pln, self.stride_plh = stride_pn, stride_ph, stride_pln, stride_plh
        self.group_size, self.qk_scale, self.v_scale = group_size, qk_scale, v_scale
        self.window_left, self.softcap_in = window_left, softcap_in
        self.HEAD_DIM, self.BLOCK_M = gl.constexpr(HEAD_DIM), gl.constexpr(BLOCK_M)
        self.BLOCK_N, self.STAGES = gl.constexpr(BLOCK_N), gl.constexpr(STAGES)
        self.IS_CAUSAL, self.WRITE_LSE = gl.constexpr(IS_CAUSAL), gl.constexpr(WRITE_LSE)
        self.HAS_PARTIALS, self.FP8 = gl.constexpr(HAS_PARTIALS), gl.constexpr(FP8)
        self.HAS_WINDOW, self.HAS_SOFTCAP = gl.constexpr(HAS_WINDOW), gl.constexpr(HAS_SOFTCAP)
        self.HAS_MASK, self.HAS_SINKS = gl.constexpr(HAS_MASK), gl.constexpr(HAS_SINKS)
        self.COPY_PAGE = gl.constexpr(COPY_PAGE)


@aggregate
class _Unit:
    """One unit of work: a work item's row tile against one KV head's keys [lo, hi) (_unit)."""
    pid_h: gl.tensor
    req: gl.tensor
    q_start: gl.tensor
    num_rows: gl.tensor
    first_row: gl.tensor
    q_offset: gl.tensor
    kv_len: gl.tensor
    kv_start: gl.tensor
    lo: gl.tensor
    hi: gl.tensor
    n_tiles: gl.tensor
    slot: gl.tensor

    @gluon.constexpr_function
    def __init__(self, pid_h, req, q_start, num_rows, first_row, q_offset, kv_len, kv_start, lo, hi, n_tiles, slot):
        self.pid_h, self.req, self.q_start, self.num_rows = pid_h, req, q_start, num_rows
        self.first_row, self.q_offset, self.kv_len, self.kv_start = first_row, q_offset, kv_len, kv_start
        self.lo, self.hi, self.n_tiles, self.slot = lo, hi, n_tiles, slot


@gluon.jit
def _unit(a: _WsArgs, i):
    """_unit_at from what a program shares (the kernel's prologue, which builds that from the
    unit, calls _unit_at itself)."""
    return _unit_at(a.work_ptr, a.qo_indptr_ptr, a.seq_lens_ptr, a.kv_indptr_ptr, a.stride_w, a.num_heads,
                    a.group_size, a.window_left, i, a.BLOCK_M, a.BLOCK_N, a.IS_CAUSAL, a.HAS_WINDOW, a.COPY_PAGE)


@gluon.jit
def _unit_at(work_ptr, qo_indptr_ptr, seq_lens_ptr, kv_indptr_ptr, stride_w, num_heads, group_size, window_left, i,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr,
             COPY_PAGE: gl.constexpr):
    """Unit i of the launch: work item i // num_heads of the plan's work list for KV head
    i % num_heads. Its keys are cut to what its rows see (causal bound, window); a padding item
    (request -1, CUDA-graph plans) has no rows and no tiles."""
    w = i // num_heads
    req = gl.load(work_ptr + w)
    live = req >= 0
    req = gl.maximum(req, 0)
    pid_m = gl.load(work_ptr + stride_w + w)
    lo = gl.load(work_ptr + 2 * stride_w + w)
    hi = gl.load(work_ptr + 3 * stride_w + w)
    slot = gl.load(work_ptr + 4 * stride_w + w)
    q_start = gl.load(qo_indptr_ptr + req)
    qo_len = gl.where(live, gl.load(qo_indptr_ptr + req + 1) - q_start, 0)
    kv_len = gl.load(seq_lens_ptr + req)
    kv_start = gl.load(kv_indptr_ptr + req)
    if COPY_PAGE >= 0:  # K/V copied by a pre-pass into its own rows
        kv_start = _request_base(kv_start, req, COPY_PAGE)
    num_rows = qo_len * group_size
    first_row = pid_m * BLOCK_M
    last_row = gl.minimum(first_row + BLOCK_M, num_rows) - 1
    q_offset = kv_len - qo_len  # causal alignment: bottom-right
    if IS_CAUSAL:
        hi = gl.minimum(hi, last_row // group_size + q_offset + 1)
    if HAS_WINDOW:  # keys before the first row's window: skipped from a multiple of 64 (of any page size) on
        lo = gl.maximum(lo, gl.maximum(first_row // group_size + q_offset - window_left, 0) // 64 * 64)
    n_tiles = gl.where(live, gl.cdiv(gl.maximum(hi - lo, 0), BLOCK_N), 0)
    return _Unit(i % num_heads, req, q_start, num_rows, first_row, q_offset, kv_len, kv_start, lo, hi, n_tiles,
                 slot)


@gluon.jit
def _dealt(i, units, programs):
    """The unit that a persistent program's i-th slot of the launch (p, p + programs, ...) takes:
    the units (longest first) are dealt out back and forth, the program that took the longest
    of one round taking the shortest of the next, so that its load evens out (the last round,
    if short of a full one, goes forward: every slot below `units` must name a unit)."""
    k = i // programs
    back = (k % 2 == 1) & ((k + 1) * programs <= units)
    return gl.where(back, (2 * k + 1) * programs - 1 - i, i)


@gluon.jit
def _ws_producer(a: _WsArgs, u, view, PAGE_SIZE: gl.constexpr, PERSISTENT: gl.constexpr):
    """One warp: copy K and V tiles into their rings, each slot once every consumer freed it: unit
    u's, or (PERSISTENT) those of the program's units in turn, each unit's first copies issued
    as soon as the last unit's tiles free their slots."""
    if PERSISTENT:
        t = 0
        units = a.stride_w * a.num_heads
        for i in range(gl.program_id(0), units, gl.num_programs(0)):
            t = _produce_unit(a, _unit(a, _dealt(i, units, gl.num_programs(0))), view, t, PAGE_SIZE)
    else:
        _produce_unit(a, u, view, 0, PAGE_SIZE)


@gluon.jit
def _produce_unit(a: _WsArgs, u: _Unit, view, t, PAGE_SIZE: gl.constexpr):
    """Unit u's K/V tiles, the program's t-th tile on. view: the K/V descriptors' view rows per
    page and rows and columns per head (kernels take them from launch.kv_desc_view), and the
    page table; see _copy_tile. Returns t past the unit's tiles."""
    k_page_rows, k_head_row, k_head_col, v_page_rows, v_head_row, v_head_col, kv_indices_ptr = view
    k_row0 = u.pid_h * k_head_row
    v_row0 = u.pid_h * v_head_row
    if PAGE_SIZE > 0:
        pages = kv_indices_ptr + u.kv_start
    else:
        k_row0 += u.kv_start
        v_row0 += u.kv_start
        pages = k_row0  # unused
    kv_at = (k_row0, u.pid_h * k_head_col, k_page_rows, v_row0, u.pid_h * v_head_col, v_page_rows, pages)
    for j in range(u.n_tiles):
        s = (t + j) % a.STAGES
        refill = t + j >= a.STAGES
        phase = (((t + j) // a.STAGES) & 1) ^ 1
        row = u.lo + j * a.BLOCK_N
        mbarrier.wait(a.k_empty.index(s), phase, pred=refill)
        _copy_tile(a.k_desc, a.k_smem.index(s), a.k_ready.index(s), row, u.kv_len, kv_at, 0, a.BLOCK_N, PAGE_SIZE)
        mbarrier.wait(a.v_empty.index(s), phase, pred=refill)
        if a.FP8:  # V^T [head dim, kv] of the request, zeros past kv_len
            mbarrier.expect(a.v_ready.index(s), a.v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a.v_desc, [0, row], a.v_ready.index(s), a.v_smem.index(s))
        else:
            _copy_tile(a.v_desc, a.v_smem.index(s), a.v_ready.index(s), row, u.kv_len, kv_at, 3, a.BLOCK_N,
                       PAGE_SIZE)
    return t + u.n_tiles


@gluon.jit
def _copy_tile(desc, smem, bar, row, kv_len, kv_at, AT: gl.constexpr, BLOCK_N: gl.constexpr,
               PAGE_SIZE: gl.constexpr):
    """KV tokens [row, row + BLOCK_N) of the request into smem, completing on bar. kv_at[AT:AT + 3]:
    the view row of the request's token 0 (ragged; paged: of its page's token 0, past the page's
    first row), the head's column, and (paged) view rows per page; kv_at[6]: the request's page ids."""
    row0 = kv_at[AT]
    col = kv_at[AT + 1]
    if PAGE_SIZE == 0:
        mbarrier.expect(bar, desc.block_type.nbytes)
        tma.async_copy_global_to_shared(desc, [row0 + row, col], bar, smem)
    else:
        # Every page slot of the tile is copied (the byte count is fixed); slots past the
        # request's last page take that page again, rows past kv_len are masked (K) or zeroed (V).
        rows_per_page = kv_at[AT + 2]
        last = gl.cdiv(gl.minimum(BLOCK_N, kv_len - row), PAGE_SIZE) - 1
        mbarrier.expect(bar, BLOCK_N // PAGE_SIZE * desc.block_type.nbytes)
        for i in gl.static_range(BLOCK_N // PAGE_SIZE):
            page = gl.load(kv_at[6] + row // PAGE_SIZE + gl.minimum(i, last)).to(gl.int64)
            tma.async_copy_global_to_shared(desc, [(page * rows_per_page).to(gl.int32) + row0, col], bar,
                                            smem.slice(i * PAGE_SIZE, PAGE_SIZE))


@gluon.jit
def _ws_consumer(a: _WsArgs, u, ptrs, WG: gl.constexpr, PAGE_SIZE: gl.constexpr, PERSISTENT: gl.constexpr):
    """One warpgroup: rows [64 WG, 64 WG + 64) of unit u's tile, or (PERSISTENT) of the
    program's units in turn. ptrs: q and its token and head strides, then the output pointers
    (o, lse, part_o, part_lse, part_indptr), sinks, the packed custom mask and its indptr, any
    of the last seven None when unused."""
    WGS: gl.constexpr = a.BLOCK_M // 64
    if PERSISTENT:
        t = 0
        units = a.stride_w * a.num_heads
        step = gl.num_programs(0)
        u = _unit(a, gl.program_id(0))
        u_next = _unit(a, _dealt(gl.minimum(gl.program_id(0) + step, units - 1), units, step))
        _q_rows(a, u, ptrs, a.q_smem.index(WG), WG, True)
        qb = 0
        for i in range(gl.program_id(0), units, step):
            async_copy.wait_group(0)  # this unit's Q rows (copied during the last unit)
            fence_async_shared()
            gl.thread_barrier()
            _q_rows(a, u_next, ptrs, a.q_smem.index((1 - qb) * WGS + WG), WG, True)  # the next unit's, meanwhile
            u_next2 = _unit(a, _dealt(gl.minimum(i + 2 * step, units - 1), units, step))  # its loads in flight
            t = _consume_unit(a, u, ptrs, a.q_smem.index(qb * WGS + WG), t, WG, PAGE_SIZE)
            u = u_next
            u_next = u_next2
            qb = 1 - qb
    else:
        _q_rows(a, u, ptrs, a.q_smem.index(WG), WG, False)
        fence_async_shared()
        gl.thread_barrier()
        _consume_unit(a, u, ptrs, a.q_smem.index(WG), 0, WG, PAGE_SIZE)


@gluon.jit
def _q_rows(a: _WsArgs, u: _Unit, ptrs, q_smem, WG: gl.constexpr, ASYNC: gl.constexpr):
    """Unit u's Q rows of warpgroup WG into q_smem: through registers, or (ASYNC) by cp.async
    (a persistent program's next unit's rows come in while it computes this one; the caller
    waits for them)."""
    q_ptr, stride_qn, stride_qh = ptrs[0], ptrs[1], ptrs[2]
    io_layout: gl.constexpr = global_io_layout(a.HEAD_DIM, 4)
    offs_mq = u.first_row + WG * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, io_layout))
    offs_dq = gl.arange(0, a.HEAD_DIM, layout=gl.SliceLayout(0, io_layout))
    q_rows = (u.q_start + offs_mq // a.group_size).to(gl.int64) * stride_qn + \
        (u.pid_h * a.group_size + offs_mq % a.group_size) * stride_qh
    if ASYNC:  # 16-byte copies: the launch takes persistent programs only for strides of 8 elements
        q_rows = gl.multiple_of(q_rows, 8)
    ptr = q_ptr + q_rows[:, None] + offs_dq[None, :]
    mask, ptr = gl.broadcast((offs_mq < u.num_rows)[:, None], ptr)
    if ASYNC:
        async_copy.async_copy_global_to_shared(q_smem, ptr, mask=mask)
        async_copy.commit_group()
    else:
        q_smem.store(gl.load(ptr, mask=mask, other=0.0))


@gluon.jit
def _consume_unit(a: _WsArgs, u: _Unit, ptrs, q_smem, t, WG: gl.constexpr, PAGE_SIZE: gl.constexpr):
    """Rows [64 WG, 64 WG + 64) of unit u, whose Q rows are in q_smem and whose K/V tiles are the
    program's t-th on, S of tile j issued before P V of tile j - 1 (ptxas waits for that product
    before the softmax of j: see the module's docstring). Returns t past the unit's tiles."""
    _, _, _, o_ptr, lse_ptr, part_o_ptr, part_lse_ptr, part_indptr_ptr, sinks_ptr, mask_ptr, \
        mask_indptr_ptr = ptrs
    dtype: gl.constexpr = a.k_smem.dtype
    BLOCK_N: gl.constexpr = a.BLOCK_N
    HEAD_DIM: gl.constexpr = a.HEAD_DIM
    STAGES: gl.constexpr = a.STAGES
    MMA_K: gl.constexpr = 32 if a.FP8 else 16  # wgmma's K: 32 bytes
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, MMA_K])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, MMA_K])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4 if a.FP8 else 2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    io_layout: gl.constexpr = global_io_layout(HEAD_DIM, 4)
    offs_m = u.first_row + WG * 64 + gl.arange(0, 64, layout=row_s)
    q_pos = offs_m // a.group_size + u.q_offset
    if a.HAS_MASK:  # the rows' mask coordinates for the per-logit bits, then for mask_rows' bytes
        mask_ptr = mask_ptr + gl.load(mask_indptr_ptr + u.req).to(gl.int64)  # each request's mask on a byte of its own
        custom = mask_row_starts(mask_ptr, a, u, WG, row_s) + \
            mask_row_starts(mask_ptr, a, u, WG, gl.SliceLayout(1, mask_bits_layout()))
    else:
        custom = None
    # Whole tiles below what the warpgroup's first row sees (and, with a window, from the first
    # key its last row's window holds) need no mask; with a custom mask, every tile does.
    seen_by_all = u.hi
    if a.HAS_MASK:
        seen_by_all = u.lo
    elif a.IS_CAUSAL:
        seen_by_all = gl.minimum(u.hi, (u.first_row + WG * 64) // a.group_size + u.q_offset + 1)
    window_all = (gl.minimum(u.first_row + WG * 64 + 64, u.num_rows) - 1) // a.group_size + u.q_offset - a.window_left
    m_i = gl.full([64], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([64], gl.float32, layout=row_s)
    acc = gl.zeros([64, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([64, BLOCK_N], gl.float32, layout=s_layout)
    n_tiles = u.n_tiles
    if n_tiles > 0:
        mbarrier.wait(a.k_ready.index(t % STAGES), (t // STAGES) & 1)
        s = warpgroup_mma(q_smem, a.k_smem.index(t % STAGES).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s,))
        mbarrier.arrive(a.k_empty.index(t % STAGES), count=1)
        s = mask_tile(soft_cap(s, a.softcap_in, a.HAS_SOFTCAP), u.lo, seen_by_all, window_all, u.hi, q_pos,
                      a.window_left, custom, a.IS_CAUSAL, a.HAS_WINDOW, a.HAS_MASK, BLOCK_N, col_s)
        m_i, l_i, alpha, p = softmax_step(s, m_i, l_i, a.qk_scale)
        p = p_operand(p, dtype, p_layout, a.FP8)
        for j in range(1, n_tiles):
            ks = (t + j) % STAGES
            vs = (t + j - 1) % STAGES
            mbarrier.wait(a.k_ready.index(ks), ((t + j) // STAGES) & 1)
            mbarrier.wait(a.v_ready.index(vs), ((t + j - 1) // STAGES) & 1)
            s = warpgroup_mma(q_smem, a.k_smem.index(ks).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            acc = warpgroup_mma(p, v_operand(a.v_smem.index(vs), a.FP8), acc, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s,))
            mbarrier.arrive(a.k_empty.index(ks), count=1)
            s = mask_tile(soft_cap(s, a.softcap_in, a.HAS_SOFTCAP), u.lo + j * BLOCK_N, seen_by_all, window_all,
                          u.hi, q_pos, a.window_left, custom, a.IS_CAUSAL, a.HAS_WINDOW, a.HAS_MASK, BLOCK_N, col_s)
            m_i, l_i, alpha, p_new = softmax_step(s, m_i, l_i, a.qk_scale)
            acc, p = pv_wait(acc, p, a.FP8)
            mbarrier.arrive(a.v_empty.index(vs), count=1)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            p = p_operand(p_new, dtype, p_layout, a.FP8)
        last = n_tiles - 1
        vs = (t + last) % STAGES
        mbarrier.wait(a.v_ready.index(vs), ((t + last) // STAGES) & 1)
        if not a.FP8:  # rows past kv_len hold whatever the tensor has there: no 0 * NaN in P V
            zero_tail(a.v_smem.index(vs), u.kv_len - (u.lo + last * BLOCK_N), BLOCK_N, HEAD_DIM)
        acc = warpgroup_mma(p, v_operand(a.v_smem.index(vs), a.FP8), acc, is_async=True)
        acc, p = pv_wait(acc, p, a.FP8)
        mbarrier.arrive(a.v_empty.index(vs), count=1)

    if a.HAS_SINKS:  # a sink logit per qo head joins the denominator (a split's partials get it when merged)
        sink = gl.load(sinks_ptr + u.pid_h * a.group_size + offs_m % a.group_size,
                       mask=(offs_m < u.num_rows) & (u.slot < 0), other=float("-inf")).to(gl.float32)
        m_i, l_i, alpha, _ = softmax_step(sink[:, None], m_i, l_i, LOG2E)  # natural log -> log2
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]

    # Finalize: out = acc v_scale / l (0 for rows that saw nothing), lse = m + log2 l (-inf for them).
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    lse = gl.where(empty, float("-inf"), m_i + gl.log2(l_safe))
    out = acc * gl.convert_layout(a.v_scale / l_safe, row_o)[:, None]
    offs_mo = u.first_row + WG * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, io_layout))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, io_layout))
    mask_m = offs_mo < u.num_rows
    mask_o = mask_m[:, None] & (offs_d[None, :] < HEAD_DIM)
    head = u.pid_h * a.group_size + offs_mo % a.group_size
    tok_g = (u.q_start + offs_mo // a.group_size).to(gl.int64)
    lse = gl.convert_layout(lse, gl.SliceLayout(1, io_layout))
    if a.HAS_PARTIALS:
        if u.slot >= 0:  # a split request: token t's chunks sit at part_indptr[t] + slot
            p_row = gl.load(part_indptr_ptr + u.q_start + offs_mo // a.group_size, mask=mask_m, other=0) + u.slot
            store_rows(part_o_ptr, part_lse_ptr, gl.convert_layout(out, io_layout), lse, p_row.to(gl.int64), head,
                       offs_d, mask_o, mask_m, a.stride_pn, a.stride_ph, a.stride_pln, a.stride_plh, True)
        else:
            store_rows(o_ptr, lse_ptr, gl.convert_layout(out.to(o_ptr.dtype.element_ty), io_layout), lse, tok_g, head,
                       offs_d, mask_o, mask_m, a.stride_on, a.stride_oh, a.stride_ln, a.stride_lh, a.WRITE_LSE)
    else:
        store_rows(o_ptr, lse_ptr, gl.convert_layout(out.to(o_ptr.dtype.element_ty), io_layout), lse, tok_g, head,
                   offs_d, mask_o, mask_m, a.stride_on, a.stride_oh, a.stride_ln, a.stride_lh, a.WRITE_LSE)
    return t + n_tiles


@gluon.jit
def _request_base(kv_start, req, PAGE_SIZE: gl.constexpr):
    """First entry of a request in the pre-pass buffers (kernels/kv_prepass.py request_base)."""
    TOKENS_PER_ENTRY: gl.constexpr = PAGE_SIZE if PAGE_SIZE > 0 else 1
    return (kv_start * TOKENS_PER_ENTRY + 15) // 16 * 16 + 32 * req


@gluon.jit(do_not_specialize=["group_size", "window_left"])
def prefill_ws_kernel(
    q_ptr, k_desc, v_desc, o_ptr, lse_ptr,
    work_ptr, qo_indptr_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr, part_o_ptr, part_lse_ptr, part_indptr_ptr,
    vt_ptr, sinks_ptr, mask_ptr, mask_indptr_ptr,
    stride_qn, stride_qh, k_page_rows, k_head_row, k_head_col, v_page_rows, v_head_row, v_head_col,
    stride_on, stride_oh, stride_ln, stride_lh,
    stride_w, stride_pn, stride_ph, stride_pln, stride_plh, stride_vth, stride_vtd,
    num_heads, group_size, qk_scale, v_scale, window_left, softcap_in,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    IS_CAUSAL: gl.constexpr, WRITE_LSE: gl.constexpr, HAS_PARTIALS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    PAGE_SIZE: gl.constexpr, COPY_PAGE: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr,
    HAS_SINKS: gl.constexpr, HAS_MASK: gl.constexpr, PERSISTENT: gl.constexpr,
):
    """Grid (work items, KV heads): a program per unit (_unit). PERSISTENT: a 1-D grid of fewer
    programs, program p taking units p, p + programs, ... (work items longest first, heads
    fastest), its producer copying the next unit's K/V while its consumers finish the last."""
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    FP8: gl.constexpr = dtype.is_fp8()
    gl.static_assert(not (PERSISTENT and FP8), "fp8 builds V^T's descriptor per program")
    WGS: gl.constexpr = BLOCK_M // 64
    q_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, HEAD_DIM], dtype)
    kv_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    vt_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HEAD_DIM, BLOCK_N], dtype)

    if not PERSISTENT:
        if gl.load(work_ptr + gl.program_id(0)) < 0:  # padding of a CUDA-graph plan
            return
    Q_BUFS: gl.constexpr = 2 if PERSISTENT else 1  # persistent: the next unit's rows come in meanwhile
    q_smem = gl.allocate_shared_memory(dtype, [Q_BUFS * WGS, 64, HEAD_DIM], q_smem_layout)  # filled by the consumers
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_smem_layout)
    if FP8:
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, HEAD_DIM, BLOCK_N], vt_smem_layout)
    else:
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_smem_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=WGS)
        mbarrier.init(v_empty.index(i), count=WGS)
    fence_async_shared()

    if PERSISTENT:
        u = gl.to_tensor(0)  # unused: each partition walks the program's units itself
    else:
        u = _unit_at(work_ptr, qo_indptr_ptr, seq_lens_ptr, kv_indptr_ptr, stride_w, num_heads, group_size, window_left,
                     gl.program_id(0) * num_heads + gl.program_id(1), BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW,
                     COPY_PAGE)
        if FP8:  # V^T of the request, its columns in P's order (kernels/kv_prepass.py); zeros past kv_len
            v_desc = tma.make_tensor_descriptor(
                vt_ptr + u.pid_h.to(gl.int64) * stride_vth + _request_base(u.kv_start, u.req, PAGE_SIZE),
                [HEAD_DIM, (u.kv_len + 15) // 16 * 16], [stride_vtd, 1], [HEAD_DIM, BLOCK_N], vt_smem_layout)
    a = _WsArgs(q_smem, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, work_ptr, qo_indptr_ptr,
                seq_lens_ptr, kv_indptr_ptr, gl.to_tensor(stride_w), gl.to_tensor(num_heads), gl.to_tensor(stride_on),
                gl.to_tensor(stride_oh), gl.to_tensor(stride_ln), gl.to_tensor(stride_lh), gl.to_tensor(stride_pn),
                gl.to_tensor(stride_ph), gl.to_tensor(stride_pln), gl.to_tensor(stride_plh),
                gl.to_tensor(group_size), gl.to_tensor(qk_scale), gl.to_tensor(v_scale), gl.to_tensor(window_left),
                gl.to_tensor(softcap_in), HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, IS_CAUSAL, WRITE_LSE, HAS_PARTIALS, FP8,
                HAS_WINDOW, HAS_MASK, HAS_SOFTCAP, HAS_SINKS, COPY_PAGE)
    # The descriptors' view rows per page and rows and columns per head (_produce_unit), and the page table.
    view = (gl.to_tensor(k_page_rows), gl.to_tensor(k_head_row), gl.to_tensor(k_head_col), gl.to_tensor(v_page_rows),
            gl.to_tensor(v_head_row), gl.to_tensor(v_head_col),
            kv_indices_ptr if PAGE_SIZE > 0 else gl.to_tensor(k_head_row))
    ptrs = (q_ptr, gl.to_tensor(stride_qn), gl.to_tensor(stride_qh), o_ptr, lse_ptr, part_o_ptr, part_lse_ptr,
            part_indptr_ptr, sinks_ptr, mask_ptr, mask_indptr_ptr)
    if WGS == 2:
        gl.warp_specialize([(_ws_consumer, (a, u, ptrs, 0, PAGE_SIZE, PERSISTENT)),
                            (_ws_consumer, (a, u, ptrs, 1, PAGE_SIZE, PERSISTENT)),
                            (_ws_producer, (a, u, view, PAGE_SIZE, PERSISTENT))], [4, 1], [CONSUMER_REGS, 24])
    else:
        gl.warp_specialize([(_ws_consumer, (a, u, ptrs, 0, PAGE_SIZE, PERSISTENT)),
                            (_ws_producer, (a, u, view, PAGE_SIZE, PERSISTENT))], [1], [24])
