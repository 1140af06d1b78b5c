"""Host-only scheduling for the batch wrappers: plans are frozen values.

A decode plan cuts every request's KV into chunks of one size, chosen so that the programs of
the launch (work items x KV heads) fill the GPU's program slots (SMs x the programs of the
tile that fit on one SM): a batch of 16 long requests splits each into several chunks, a batch
of 256 short ones is not split at all. Split requests write partial states to the float
workspace, and the last program of a request (per row tile and KV head) to finish merges them in
the same launch: it counts itself in at an int32 counter of the plan's (`counters`, the wrapper's
own memory), which every launch leaves at zero.

Multi-token decode (q_len_per_req = n > 1) gives each request n query tokens, n x group packed
rows cut into row tiles; a request has one work item per (KV chunk, row tile). A split chunk
owns n consecutive partial rows (its tokens), so merge_indptr counts chunks per request.

Everything the kernels read about the plan travels in one int32 buffer and one host-to-device
copy:  [work: 5 rows x max_work | seq_lens: B | merge_indptr: B + 1 | kv_indptr: B + 1 |
       qo_indptr: B + 1]
with work rows (request, row tile, kv start, kv end, partial slot); request -1 is padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import triton

from .launch import Variant

WORK_FIELDS = 5


@dataclass(frozen=True)
class DecodePlan:
    batch_size: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    o_dtype: torch.dtype
    variant: Variant
    use_tensor_cores: bool
    q_len_per_req: int       # query tokens per request (causal among them when > 1)
    block_m: int             # rows (token, head-in-group) per row tile (tensor-core path)
    block_n: int
    kv_chunk: int            # tokens per work item
    num_work: int            # work items with a request (the rest of max_work is padding)
    max_work: int            # grid axis 0 (fixed across plans in CUDA-graph mode)
    num_partials: int        # partial rows the split requests write (q_len_per_req per chunk)
    max_seq_len: int
    buffer: torch.Tensor = field(repr=False)      # int32, on the device
    part_o: torch.Tensor = field(repr=False)      # fp32 [partial rows, H_qo, D], a view of the workspace
    part_lse: torch.Tensor = field(repr=False)    # fp32 [partial rows, H_qo]
    counters: torch.Tensor = field(repr=False)    # int32 [B x row tiles x H_kv], zero between launches

    @property
    def work(self) -> torch.Tensor:
        return self.buffer[: WORK_FIELDS * self.max_work].view(WORK_FIELDS, self.max_work)

    def _section(self, i: int) -> torch.Tensor:
        start, length = section(self.batch_size, self.max_work, i)
        return self.buffer[start: start + length]

    @property
    def seq_lens(self) -> torch.Tensor:
        return self._section(0)

    @property
    def merge_indptr(self) -> torch.Tensor:
        return self._section(1)

    @property
    def kv_indptr(self) -> torch.Tensor:
        return self._section(2)

    @property
    def qo_indptr(self) -> torch.Tensor:
        return self._section(3)

    def __repr__(self) -> str:
        splits = f"{self.num_work} work items for {self.batch_size} requests"
        if self.q_len_per_req > 1:
            splits += f" x {self.q_len_per_req} tokens (BLOCK_M={self.block_m})"
        return (f"DecodePlan(batch={self.batch_size}, heads={self.num_qo_heads}/{self.num_kv_heads}, "
                f"head_dim={self.head_dim}, page_size={self.page_size}, "
                f"{'tensor cores' if self.use_tensor_cores else 'CUDA cores'}, kv_chunk={self.kv_chunk}, {splits}, "
                f"{self.num_partials} partial rows, grid=({self.max_work}, {self.num_kv_heads}), "
                f"max_seq_len={self.max_seq_len}, dtypes q={self.q_dtype} kv={self.kv_dtype} o={self.o_dtype})")


def section(batch_size: int, max_work: int, i: int) -> tuple[int, int]:
    """(start, length) of section i (0 seq_lens, 1 merge_indptr, 2 kv_indptr, 3 qo_indptr)."""
    b = batch_size
    return WORK_FIELDS * max_work + (0 if i == 0 else b + (i - 1) * (b + 1)), (b if i == 0 else b + 1)


def buffer_len(batch_size: int, max_work: int) -> int:
    return WORK_FIELDS * max_work + 4 * batch_size + 3


def max_work_items(batch_size: int, num_kv_heads: int, slots: int, row_tiles: int = 1) -> int:
    """Work items a plan may produce: row_tiles per request, or up to the split target
    (choose_chunk keeps chunks x row_tiles x num_kv_heads within slots)."""
    return max(batch_size * row_tiles, triton.cdiv(slots, num_kv_heads))


def choose_chunk(seq_lens: torch.Tensor, programs_per_chunk, slots: int, block_n: int, min_chunk: int,
                 fixed_split_tokens: Optional[int], disable_split: bool) -> int:
    """Tokens per work item: the smallest multiple of block_n (>= min_chunk) for which the
    launch's programs stay within `slots` (the programs the GPU runs at once: SMs x programs per
    SM of the kernel's tile); no split when the batch alone fills them. programs_per_chunk: KV
    heads x row tiles, one int for all requests or a tensor [B]."""
    max_len = int(seq_lens.max()) if seq_lens.numel() else 0
    whole = max(triton.cdiv(max(max_len, 1), block_n) * block_n, block_n)
    if fixed_split_tokens is not None:
        return fixed_split_tokens
    per_request = programs_per_chunk * torch.ones_like(seq_lens)
    if disable_split or int(per_request.sum()) >= slots or max_len <= min_chunk:
        return whole

    def programs(chunk: int) -> int:
        return int((torch.clamp((seq_lens + chunk - 1) // chunk, min=1) * per_request).sum())

    lo, hi = triton.cdiv(min_chunk, block_n), whole // block_n  # in units of block_n
    while lo < hi:
        mid = (lo + hi) // 2
        if programs(mid * block_n) <= slots:
            hi = mid
        else:
            lo = mid + 1
    return lo * block_n


def build_decode_buffer(seq_lens: torch.Tensor, kv_indptr: torch.Tensor, chunk: int, max_work: int,
                        pin: bool, q_len_per_req: int = 1, row_tiles: int = 1, window_left: int = -1,
                        kv_align: int = 64) -> tuple[torch.Tensor, int, int]:
    """The plan's int32 host buffer (pinned when a GPU will read it), and (num_work, num_partials).
    seq_lens [B] and kv_indptr [B + 1] are int32 host tensors. Work items run request by
    request, chunk by chunk, the row tiles of one chunk side by side (they read the same KV).
    With a sliding window a request's chunks start at window_start (kv_align: the kernel's KV
    tile), so that no program is given keys outside every row's window."""
    batch, n = seq_lens.numel(), q_len_per_req
    kv_first = window_start(torch.full_like(seq_lens, n), seq_lens, window_left, kv_align)
    chunks = torch.clamp((seq_lens - kv_first + chunk - 1) // chunk, min=1)
    items = chunks * row_tiles
    num_work = int(items.sum())
    if num_work > max_work:
        raise ValueError(f"the plan needs {num_work} work items but this wrapper holds {max_work} "
                         "(CUDA-graph buffers are sized at construction); raise fixed_split_size or "
                         "leave it unset")
    req = torch.repeat_interleave(torch.arange(batch, dtype=torch.int32), items)
    first = torch.cumsum(items, 0) - items
    idx = torch.arange(num_work, dtype=torch.int32) - torch.repeat_interleave(first, items).to(torch.int32)
    c, m_tile = idx // row_tiles, idx % row_tiles
    lo = kv_first[req.long()] + c * chunk
    hi = torch.minimum(lo + chunk, seq_lens[req.long()])
    split = chunks > 1
    merge_indptr = torch.zeros(batch + 1, dtype=torch.int32)  # in chunks: chunk k owns partial rows n*k ..
    merge_indptr[1:] = torch.cumsum(torch.where(split, chunks, 0), 0)
    slot = torch.where(split[req.long()], (merge_indptr[req.long()] + c) * n, -1)

    buf = torch.empty(buffer_len(batch, max_work), dtype=torch.int32, pin_memory=pin)
    work = buf[: WORK_FIELDS * max_work].view(WORK_FIELDS, max_work)
    work.fill_(0)
    work[0].fill_(-1)
    work[0, :num_work] = req
    work[1, :num_work] = m_tile
    work[2, :num_work] = lo
    work[3, :num_work] = hi
    work[4, :num_work] = slot
    qo_indptr = torch.arange(batch + 1, dtype=torch.int32) * n
    for i, values in enumerate((seq_lens, merge_indptr, kv_indptr, qo_indptr)):
        start, length = section(batch, max_work, i)
        buf[start: start + length] = values
    return buf, num_work, int(merge_indptr[-1]) * n


@dataclass(frozen=True)
class PrefillPlan:
    """A batch prefill plan: every request's packed (token, head-in-group) rows cut into
    BLOCK_M tiles; one work item per tile and KV chunk (requests longer than kv_chunk are split
    when the batch alone would not fill the GPU; see build_prefill_buffer)."""
    batch_size: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim_qk: int
    head_dim_vo: int
    page_size: int           # 0 for a ragged (contiguous per request) KV
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    o_dtype: torch.dtype
    variant: Variant
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    warp_spec: bool
    kv_chunk: int            # KV tokens per work item of a split request
    num_work: int
    num_partials: int        # partial rows the split requests write (merged after the launch)
    total_qo: int
    total_kv: int            # tokens (ragged) or pages (paged) the page table names
    buffer: torch.Tensor = field(repr=False)
    part_o: Optional[torch.Tensor] = field(repr=False, default=None)    # fp32 [partial rows, H_qo, D_vo]
    part_lse: Optional[torch.Tensor] = field(repr=False, default=None)  # fp32 [partial rows, H_qo]
    packed_mask: Optional[torch.Tensor] = field(repr=False, default=None)
    mask_indptr: Optional[torch.Tensor] = field(repr=False, default=None)
    max_kv_len: int = 0      # tokens of the longest request's KV
    maxnreg: Optional[int] = None  # the Gluon kernel's register cap (launch.SHORT_TILE: two programs an SM)
    persistent: bool = False  # the Gluon kernel on persistent programs (launch.TileConfig)
    # Pre-pass buffers of the Gluon kernel (kernels/kv_prepass.py): fp8 q/k/v, V^T [H_kv, D_vo,
    # entries]; 16-bit q over a KV read from a copy (launch.kv_copied), (K, V) in q's dtype
    # [entries, H_kv, D] (launch.prepass_len).
    v_t: Optional[torch.Tensor] = field(repr=False, default=None)
    kv_copy: Optional[tuple] = field(repr=False, default=None)

    @property
    def part_indptr(self) -> torch.Tensor:
        """[total_qo + 1]: token t's partial rows (token-major; none for unsplit requests)."""
        return self.buffer[buffer_len(self.batch_size, max(self.num_work, 1)):]

    def __repr__(self) -> str:
        kind = f"paged (page_size={self.page_size})" if self.page_size else "ragged"
        return (f"PrefillPlan(batch={self.batch_size}, {kind}, heads={self.num_qo_heads}/{self.num_kv_heads}, "
                f"head_dim={self.head_dim_qk}/{self.head_dim_vo}, {self.total_qo} query tokens, "
                f"{self.num_work} work items of BLOCK_M={self.block_m}, kv_chunk={self.kv_chunk}, "
                f"{self.num_partials} partial rows, grid=({self.num_work}, {self.num_kv_heads}), "
                f"causal={self.variant.causal}, custom mask={self.packed_mask is not None}, "
                f"dtypes q={self.q_dtype} kv={self.kv_dtype} o={self.o_dtype}{self._prepass_repr()})")

    def _prepass_repr(self) -> str:
        if self.v_t is not None:
            return f", pre-pass V^T {list(self.v_t.shape)}"
        if self.kv_copy is not None:
            return f", pre-pass K/V copied to {list(self.kv_copy[0].shape)} each"
        return ""


def window_start(qo_lens: torch.Tensor, seq_lens: torch.Tensor, window_left: int, align: int) -> torch.Tensor:
    """Each request's first KV token that any of its rows sees through a sliding window (inclusive
    window_left; -1: none, 0), rounded down to a multiple of `align` (the kernels' KV tile)."""
    if window_left < 0:
        return torch.zeros_like(seq_lens)
    return (seq_lens - qo_lens - window_left).clamp(min=0) // align * align


def build_prefill_buffer(qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, seq_lens: torch.Tensor, group: int,
                         block_m: int, causal: bool, chunk: int, pin: bool, max_work: Optional[int] = None,
                         max_qo: Optional[int] = None, window_left: int = -1,
                         kv_align: int = 64) -> tuple[torch.Tensor, int, int]:
    """The plan's int32 host buffer, its work count and its partial-row count.

    Every request's rows are cut into BLOCK_M tiles; a request whose KV range is longer than
    `chunk` tokens is split into chunks, one work item per (row tile, chunk), each writing partial
    states (slot = chunk index). With a sliding window the range starts at window_start (keys
    before it are outside every row's window). A split request's token t owns partial rows
    part_indptr[t] .. + chunks (token-major), part_indptr [total_qo + 1] being the buffer's last
    section. Work items come heaviest first (most keys to visit), so the short tiles of a causal
    prefill fill in behind the long ones instead of leaving SMs idle at the end. max_work / max_qo
    (CUDA-graph plans): the work list's and the token sections' fixed lengths, padded (request -1)."""
    batch = seq_lens.numel()
    qo_lens = (qo_indptr[1:] - qo_indptr[:-1]).to(torch.int32)
    tiles = (qo_lens * group + block_m - 1) // block_m
    kv_first = window_start(qo_lens, seq_lens, window_left, kv_align)
    span = seq_lens - kv_first
    chunks = torch.where(span > chunk, (span + chunk - 1) // chunk, 1).to(torch.int32)
    items = tiles * chunks
    num_work = int(items.sum())
    if max_work is None:
        max_work = max(num_work, 1)
    elif num_work > max_work:
        raise ValueError(f"the plan needs {num_work} work items, the CUDA-graph grid has {max_work}")
    req = torch.repeat_interleave(torch.arange(batch, dtype=torch.int32), items)
    r = req.long()
    within = torch.arange(num_work, dtype=torch.int32) - torch.repeat_interleave(torch.cumsum(items, 0) - items, items)
    m_tile, j = within // chunks[r], within % chunks[r]
    split = chunks[r] > 1
    lo = kv_first[r] + torch.where(split, j * chunk, 0)
    hi = torch.where(split, torch.minimum(lo + chunk, seq_lens[r]), seq_lens[r])
    start, end = lo, hi
    if causal:  # the tile's last row sees up to its token's position (bottom-right aligned)
        last_row = torch.minimum((m_tile + 1) * block_m, qo_lens[r] * group) - 1
        end = torch.minimum(hi, (last_row // group + seq_lens[r] - qo_lens[r] + 1).clamp(min=0))
    if window_left >= 0:  # and its first row from its window's first key
        start = torch.maximum(lo, m_tile * block_m // group + seq_lens[r] - qo_lens[r] - window_left)
    order = torch.argsort((end - start).clamp(min=0), descending=True, stable=True)
    total_qo = int(qo_indptr[-1])
    max_qo = total_qo if max_qo is None else max_qo
    per_token = torch.repeat_interleave(torch.where(chunks > 1, chunks, 0), qo_lens.long())
    part_indptr = torch.zeros(max_qo + 1, dtype=torch.int32)
    part_indptr[1: total_qo + 1] = torch.cumsum(per_token, 0)
    part_indptr[total_qo + 1:] = part_indptr[total_qo]

    buf = torch.empty(buffer_len(batch, max_work) + max_qo + 1, dtype=torch.int32, pin_memory=pin)
    work = buf[: WORK_FIELDS * max_work].view(WORK_FIELDS, max_work)
    work.fill_(0)
    work[0].fill_(-1)
    work[4].fill_(-1)
    for f, values in enumerate((req, m_tile, lo, hi, torch.where(split, j, -1))):
        work[f, :num_work] = values[order]
    for i, values in enumerate((seq_lens, torch.zeros(batch + 1, dtype=torch.int32), kv_indptr, qo_indptr)):
        start, length = section(batch, max_work, i)
        buf[start: start + length] = values
    buf[buffer_len(batch, max_work):] = part_indptr
    return buf, max_work, int(part_indptr[-1])
