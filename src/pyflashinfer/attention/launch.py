"""Host-side launchers for the attention kernels: tile tables, KV split, workspace, merge.

The public entry points (single.py, and the batch wrappers built on them) validate their
inputs and call these with NHD-strided views: q [qo_len, H_qo, D_qk], k [kv_len, H_kv, D_qk],
v [kv_len, H_kv, D_vo] (an HND tensor arrives as a transposed view, never copied).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton

from .._launch import aligned16, empty_output, launch
from ..utils import is_interpreting, num_sms
from .kernels.decode import decode_fwd_kernel
from .kernels.merge import merge_states_kernel
from .kernels.prefill import attention_fwd_kernel
from .kernels.kv_prepass import copy_kv_kernel, transpose_v_kernel


@dataclass(frozen=True)
class Variant:
    """What shapes the logits: everything but the tensors. Built once per call (or per plan)."""

    sm_scale: float                 # includes q_scale * k_scale
    v_scale: float = 1.0
    causal: bool = False
    window_left: int = -1           # inclusive; -1 = off
    soft_cap: float = 0.0           # 0 = off
    use_rope: bool = False
    rope_scale: float = 1.0
    rope_theta: float = 1e4
    use_alibi: bool = False

    def kernel_args(self) -> dict:
        return dict(
            sm_scale=self.sm_scale, soft_cap=self.soft_cap or 1.0, window_left=self.window_left,
            rope_rcp_scale=1.0 / self.rope_scale, rope_log2_theta=math.log2(self.rope_theta),
            v_scale=self.v_scale, HAS_WINDOW=self.window_left >= 0, HAS_SOFTCAP=self.soft_cap > 0,
            HAS_ALIBI=self.use_alibi, USE_ROPE=self.use_rope,
        )


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    warp_spec: bool = False  # producer/consumer warps for the unmasked KV loop (with KV_TMA)
    maxnreg: Optional[int] = None  # Gluon kernel: registers per thread capped so that two programs share an SM
    persistent: bool = False  # Gluon kernel: persistent programs where the units outnumber those that fit at once


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


# Tensor-core path on sm_90, by padded head dim. d128: 128 x 128 tiles, 8 warps, 3 stages led
# `bench_prefill.py --sweep` on the H100 (2026-11-23: 277 / 473 TFLOP/s at llama3-8b L4096 /
# L16384 through the ragged wrapper, against 270 / 452 for the old 128 x 64). d256 halves
# BLOCK_M to stay inside registers.
_PREFILL_TILES = {64: TileConfig(128, 64, 4, 3), 128: TileConfig(128, 128, 8, 3),
                  256: TileConfig(64, 64, 8, 2)}
_INTERP_TILE = TileConfig(64, 64, 4, 1)  # the interpreter's cost is per program and step


def prefill_tile(block_d: int, rows: int, use_rope: bool = False, has_mask: bool = False,
                 gpu: Optional[bool] = None) -> TileConfig:
    """Tile of the tensor-core kernel for `rows` packed query rows (gpu=None: the GPU's unless
    interpreting). RoPE on the fly loads each K tile twice, and a custom mask's byte loads take
    scratch beside the K/V stages (16-bit d128 at 3 stages: 233,528 B, over sm_90's 232,448):
    one stage less keeps d128 at 128 x 128 inside shared memory."""
    gpu = not is_interpreting() if gpu is None else gpu
    cfg = _PREFILL_TILES[max(64, block_d)] if gpu else _INTERP_TILE
    block_m = min(cfg.block_m, _pow2(rows))
    stages = min(cfg.num_stages, 2) if (use_rope or has_mask) and gpu else cfg.num_stages
    return TileConfig(block_m, cfg.block_n, cfg.num_warps if block_m >= 64 else 4, stages,
                      cfg.warp_spec and block_m == cfg.block_m)


def decode_tile(block_g: int, block_d: int, gpu: Optional[bool] = None) -> TileConfig:
    if not (not is_interpreting() if gpu is None else gpu):
        return TileConfig(block_g, 64, 4, 1)
    # The [G, N, D] product lives in registers: keep G*N*D near 8K fp32 per 4-warp program.
    block_n = max(16, min(64, 8192 // (block_g * block_d)))
    return TileConfig(block_g, block_n, 4, 2)


@functools.lru_cache(maxsize=None)
def _has_tma(device: torch.device) -> bool:
    return is_interpreting() or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)


def kv_tma(k: torch.Tensor, v: torch.Tensor, token_head_strides: tuple, *, paged: bool, use_rope: bool) -> bool:
    """Whether contiguous K/V tiles can be read through tensor descriptors (sm_90's copy engine,
    or the interpreter): no page table, no RoPE applied on the fly, power-of-two head dims, and
    16-byte aligned bases and strides (token_head_strides in elements: k token, k head, v token, v head)."""
    d_qk, d_vo = k.shape[-1], v.shape[-1]
    if paged or use_rope or d_qk != _pow2(d_qk) or d_vo != _pow2(d_vo) or not _has_tma(k.device):
        return False
    size = k.element_size()
    return aligned16(k, v) and all(s * size % 16 == 0 for s in token_head_strides)


@functools.lru_cache(maxsize=None)
def _is_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def tma_pages(page_size: int, block_n: int) -> bool:
    """Whether the Gluon kernel reads a paged KV's pages itself, one copy-engine copy per page:
    pages of 8-64 tokens that tile its KV tiles (block_n: the plan's KV tile)."""
    return page_size in (8, 16, 32, 64) and block_n % page_size == 0


def kv_copied(plan) -> bool:
    """Whether the Gluon kernel reads K/V from a ragged copy in q's dtype that a pre-pass writes
    first (kernels/kv_prepass.py copy_kv_kernel): 16-bit q over an fp8 KV (dequantized), or over
    a 16-bit paged KV whose pages it does not read itself (gathered: pages of 1-4 tokens, of a
    size not a power of two, or longer than its KV tile)."""
    return kv_copied_fields(plan.q_dtype, plan.kv_dtype, plan.page_size, plan.block_n)


def kv_copied_fields(q_dtype: torch.dtype, kv_dtype: torch.dtype, page_size: int, block_n: int) -> bool:
    """kv_copied of a plan with these fields (page_size 0: ragged)."""
    return q_dtype.itemsize == 2 and (kv_dtype in _FP8 or (page_size > 0 and not tma_pages(page_size, block_n)))


def hopper_covers(plan, device: torch.device, backend: str = "auto") -> bool:
    """Whether a batch prefill plan is one the Gluon wgmma kernel (kernels/prefill_hopper.py)
    computes: on sm_90 (never under the interpreter) unless backend="fa2"; q, k and v of one
    dtype, 16-bit or fp8 e4m3, or 16-bit q over an fp8 KV; equal head dims of 64 or 128 (or 256
    with 16-bit q), row tiles of 64 or 128, causal or not, custom mask, window and soft cap or
    not, with no RoPE or ALiBi; a ragged KV, or pages of any size with 16-bit q (pages that
    tma_pages names are read in place, others through a copy: kv_copied), of 8-64 tokens with
    fp8 q."""
    var = plan.variant
    return hopper_covers_fields(device, backend, plan.q_dtype, plan.kv_dtype, plan.head_dim_qk, plan.head_dim_vo,
                                plan.page_size, plan.block_m, plan.block_n, var.use_rope or var.use_alibi)


def hopper_covers_fields(device: torch.device, backend: str, q_dtype: torch.dtype, kv_dtype: torch.dtype,
                         head_dim_qk: int, head_dim_vo: int, page_size: int, block_m: int, block_n: int,
                         has_pos_encoding: bool) -> bool:
    """hopper_covers of a plan with these fields (page_size 0: ragged)."""
    pages_ok = not page_size or tma_pages(page_size, block_n) or q_dtype.itemsize == 2
    dtypes_ok = ((q_dtype in (torch.float16, torch.bfloat16) and kv_dtype in (q_dtype, *_FP8))
                 or q_dtype == kv_dtype == torch.float8_e4m3fn)
    return (backend != "fa2" and not is_interpreting() and _is_sm90(device) and pages_ok and dtypes_ok
            and head_dim_qk == head_dim_vo
            and (head_dim_qk in (64, 128) or (head_dim_qk == 256 and q_dtype.itemsize == 2))
            and block_m in (64, 128) and not has_pos_encoding)


# Short prefill on the Gluon kernel (16-bit q, head dim 128): 64 x 64 tiles with registers capped at
# 128 a thread, so that two programs share an SM and one's start and finish overlap the other's
# products; persistent programs where the units outnumber them (batch_launch). Against the
# 128 x 128 tile, per CUDA-graph call (H200, 2026-12-07, benchmarks/RESULTS.md): bs4 L512 202.5
# -> 246.5 TFLOP/s, bs16 L256 133.1 -> 176.4, bs8 L1024 363.7 -> 381.7; llama3-8b L4096 595.2 ->
# 488.8 (the long tile keeps that). SHORT_KEYS bounds the keys a query row sees on average,
# each request weighted by its work (mean_keys): on the H100 (bench_prefill.py --short, 2026-12-07)
# the short tile leads by 1-8% where rows see 512 keys, trails by 6% at 768 and by 4-12% at 1,024.
# It pays on rows that end on a causal diagonal (or a custom mask), whose last tile the 128-row
# tile would half waste; without one, the 128-row tile on persistent programs leads it (below).
SHORT_TILE = TileConfig(64, 64, 4, 2, maxnreg=128, persistent=True)
SHORT_KEYS = 640
# The 128-row tile (head dims up to 128: two Q buffers fit beside the K/V rings; no custom mask,
# not yet timed) runs on persistent programs where its rows see PERSISTENT_KEYS keys or fewer:
# each program's next unit starts while it finishes the last, where a program per unit leaves
# that start exposed; past them, the hardware's own order of programs balances long causal units
# better. Per CUDA-graph call against a program per unit (H100, 2026-12-07/08,
# benchmarks/RESULTS.md): non-causal bs8 L512 +21%, bs16 L256 +29%, bs2 L1024 +10%; causal bs8
# L1024 +5%, bs4 L1536 +5%, bs4 L2048 -3 to +3%; llama3-8b L16384 -2%.
PERSISTENT_KEYS = 1024


def mean_keys(qo_lens: torch.Tensor, spans: torch.Tensor, causal: bool) -> float:
    """The keys a query row of a batch sees on average, each request weighted by its work
    (rows x keys): qo_lens and spans (the KV a row may see: kv_len, or what a window leaves)
    per request, on the host. Causal rows see from the span's last qo_len keys on, so half of
    those fewer."""
    qo, span = qo_lens.double(), spans.double()
    keys = (span - torch.minimum(qo, span) / 2).clamp(min=0) if causal else span
    work = qo * keys
    total = float(work.sum())
    return float((work * keys).sum()) / total if total > 0 else 0.0


def batch_prefill_tile(device: torch.device, backend: str, q_dtype: torch.dtype, kv_dtype: torch.dtype,
                       head_dim_qk: int, head_dim_vo: int, page_size: int, rows: int, has_mask: bool,
                       use_rope: bool, has_pos_encoding: bool, keys: float = float("inf"),
                       diagonal: bool = True) -> TileConfig:
    """A batch prefill plan's tile: the portable kernel's (prefill_tile), except where the Gluon
    kernel covers the plan: head dim 256 takes 128-row tiles where it reads K/V in place (two
    consumer warpgroups of 64 rows; the portable kernel's registers bound it to 64, and a plan
    read through a copy falls back to it when the copy does not fit): 1.2x per CUDA-graph call
    at Gemma 2's shapes on the H100 (benchmarks/RESULTS.md); 16-bit q at head dim 128 takes
    SHORT_TILE where its rows see SHORT_KEYS keys or fewer (keys: mean_keys of the batch), end
    on a causal diagonal or a custom mask (diagonal) and fill a 64-row tile. Tiles at head dims
    up to 128 whose rows see PERSISTENT_KEYS keys or fewer run on persistent programs, except
    with a custom mask (not yet timed there; the launch decides where the Gluon kernel runs
    them). rows: the most packed query rows of a request."""
    tile = prefill_tile(max(_pow2(head_dim_qk), _pow2(head_dim_vo)), rows, use_rope, has_mask)
    if (keys <= SHORT_KEYS and diagonal and head_dim_qk == head_dim_vo == 128 and q_dtype.itemsize == 2
            and tile.block_m >= 64
            and hopper_covers_fields(device, backend, q_dtype, kv_dtype, head_dim_qk, head_dim_vo, page_size,
                                     SHORT_TILE.block_m, SHORT_TILE.block_n, has_pos_encoding)):
        return SHORT_TILE
    if keys <= PERSISTENT_KEYS and not has_mask and max(head_dim_qk, head_dim_vo) <= 128:
        tile = replace(tile, persistent=True)
    copied = kv_copied_fields(q_dtype, kv_dtype, page_size, tile.block_n)
    if head_dim_qk == 256 and tile.block_m == 64 and rows > 64 and not copied and hopper_covers_fields(
            device, backend, q_dtype, kv_dtype, head_dim_qk, head_dim_vo, page_size, 128, tile.block_n,
            has_pos_encoding):
        return TileConfig(128, tile.block_n, tile.num_warps, tile.num_stages, tile.warp_spec)
    return tile


def prepass_len(tokens: int, batch: int) -> int:
    """Entries (V^T columns, or dequantized K/V rows) of a pre-pass buffer (kernels/kv_prepass.py)
    for a batch whose KV spans `tokens` (ragged length, or pages x page size)."""
    return (tokens + 15) // 16 * 16 + 32 * batch


def _prepass_grid(batch: int, max_kv_len: int, num_kv_heads: int) -> tuple:
    return batch, max(1, triton.cdiv(max_kv_len, _PREPASS_BLOCK_T)), num_kv_heads


_PREPASS_BLOCK_T = 128  # tokens per program and step of the K/V pre-passes


def write_vt(vt: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor, kv_indptr: torch.Tensor,
             kv_indices: Optional[torch.Tensor], v_strides: tuple, page_size: int, batch: int, max_kv_len: int):
    """V^T of the batch's requests into vt [H_kv, D_vo, prepass_len(...)] (kernels/kv_prepass.py):
    v is ragged [tokens, H_kv, D_vo] (page_size 0, kv_indptr in tokens) or a paged cache
    (kv_indptr into kv_indices); seq_lens [batch] in tokens; v_strides (page, token, head) in
    elements. Returns the launch's Replay."""
    vp, vn, vh = v_strides
    return launch(transpose_v_kernel, _prepass_grid(batch, max_kv_len, vt.shape[0]), num_warps=4, num_stages=1,
                  v_ptr=v, vt_ptr=vt, seq_lens_ptr=seq_lens, kv_indptr_ptr=kv_indptr, kv_indices_ptr=kv_indices,
                  stride_vpage=vp, stride_vn=vn, stride_vh=vh, stride_vth=vt.stride(0), stride_vtd=vt.stride(1),
                  HEAD_DIM=vt.shape[1], BLOCK_T=_PREPASS_BLOCK_T, PAGE_SIZE=page_size)


def copy_kv(kc: torch.Tensor, vc: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor,
            kv_indptr: torch.Tensor, kv_indices: Optional[torch.Tensor], strides: tuple, page_size: int,
            batch: int, max_kv_len: int, qo_indptr: Optional[torch.Tensor] = None, window_left: int = -1,
            window_align: int = 0):
    """The batch's K/V into kc/vc [prepass_len(...), H_kv, D] of a 16-bit dtype, dequantized from
    fp8 or gathered from pages (kernels/kv_prepass.py); k/v and the rest as write_vt, strides (k
    page, k token, k head, v page, v token, v head). With a sliding window (window_left >= 0,
    qo_indptr [B + 1]), each request from plan.window_start(..., window_align) on. Returns the
    launch's Replay."""
    kp, kn, kh, vp, vn, vh = strides
    window_align = window_align if window_left >= 0 else 0
    return launch(copy_kv_kernel, _prepass_grid(batch, max_kv_len, kc.shape[1]), num_warps=4, num_stages=1,
                  k_ptr=k, v_ptr=v, kc_ptr=kc, vc_ptr=vc, seq_lens_ptr=seq_lens, kv_indptr_ptr=kv_indptr,
                  kv_indices_ptr=kv_indices, qo_indptr_ptr=qo_indptr if window_align else None, stride_kpage=kp,
                  stride_kn=kn, stride_kh=kh, stride_vpage=vp, stride_vn=vn, stride_vh=vh, stride_cn=kc.stride(0),
                  stride_ch=kc.stride(1), window_left=window_left, HEAD_DIM=kc.shape[2], BLOCK_T=_PREPASS_BLOCK_T,
                  PAGE_SIZE=page_size, WINDOW_ALIGN=window_align)


@dataclass(frozen=True)
class KvView:
    """K or V of every KV head as the 2D row-major view [rows, width] (row stride: the token
    stride) that the Gluon kernel's host-side tensor descriptors read. Page p's token t of head h
    (ragged: token t, p = 0) sits at view row p page_rows + h head_row + t, columns from
    h head_col: heads stacked (HND-like strides) are head_row rows apart, heads side by side in a
    token's row (NHD-like) head_col columns apart."""

    rows: int
    width: int
    row_stride: int
    page_rows: int
    head_row: int
    head_col: int


def kv_desc_view(t: torch.Tensor, strides: tuple, page_size: int, heads: int) -> Optional[KvView]:
    """The KvView of t (ragged [tokens, heads, D], or a paged cache [pages, ..., D] with page_size
    tokens a page; strides (page, token, head) in elements), or None where the copy engine cannot
    read it so: an unaligned base or stride, a page stride not a whole number of token strides,
    heads that neither stack nor fit side by side in a token's row, or more than 2^31 rows."""
    sp, sn, sh = strides
    d = t.shape[-1]
    size = t.element_size()
    count = t.shape[0]  # tokens, or pages
    if (count == 0 or t.stride(-1) != 1 or sn <= 0 or sh < 0 or not aligned16(t)
            or any(s * size % 16 for s in (sp, sn, sh)) or (page_size and sp % sn)):
        return None
    page_rows = sp // sn if page_size else 0
    tokens = (count - 1) * page_rows + page_size if page_size else count
    if sh % sn == 0:
        view = KvView(tokens + (heads - 1) * (sh // sn), d, sn, page_rows, sh // sn, 0)
    elif (heads - 1) * sh + d <= sn:
        view = KvView(tokens, (heads - 1) * sh + d, sn, page_rows, 0, sh)
    else:
        return None
    return view if view.rows < 2 ** 31 else None


def hopper_prefill(plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, strides: tuple,
                   backend: str = "auto") -> bool:
    """Whether this launch of a batch prefill plan runs on the Gluon kernel: a plan it covers
    (hopper_covers) with the pre-pass buffer it needs (fp8 q: V^T, plan.v_t; a KV it reads from a
    copy, kv_copied: plan.kv_copy; the plan holds them when they fit), and K (and V, but with fp8
    q, whose V the pre-pass reads) read in place through host-side tensor descriptors
    (kv_desc_view). strides: (k page, k token, k head, v page, v token, v head) in elements.
    Everything else runs on the portable kernel (kernels/prefill.py)."""
    if not hopper_covers(plan, q.device, backend):
        return False
    if kv_copied(plan):  # the pre-pass reads any strides
        return plan.kv_copy is not None
    if q.element_size() == 1 and plan.v_t is None:
        return False
    h = plan.num_kv_heads
    return (kv_desc_view(k, strides[:3], plan.page_size, h) is not None
            and (q.element_size() == 1 or kv_desc_view(v, strides[3:], plan.page_size, h) is not None))


def fp8_qk(q: torch.Tensor, k: torch.Tensor) -> bool:
    """q.k on fp8 tensor cores: both fp8, on sm_90 (the interpreter multiplies fp8 in fp16)."""
    return q.element_size() == 1 and k.element_size() == 1 and not is_interpreting()


def kv_split(num_programs: int, kv_len: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(num_splits, kv_chunk): split long KV so that about two waves of programs fill the SMs."""
    min_chunk = 4 * block_n if is_interpreting() else max(256, 4 * block_n)
    target = 2 * num_sms(device)
    if num_programs >= target or kv_len <= min_chunk:
        return 1, max(kv_len, 1)
    splits = min(triton.cdiv(target, num_programs), triton.cdiv(kv_len, min_chunk))
    chunk = triton.cdiv(triton.cdiv(kv_len, splits), block_n) * block_n
    return triton.cdiv(kv_len, chunk), chunk


# Splits the merge kernel reads at once (kernels/merge.py; split batch prefill, single requests,
# cascades). Batch decode merges its splits inside its own launch (kernels/common.merge_split_request).
MERGE_BLOCK_S = 16


def merge_states_into(v_part: torch.Tensor, s_part: torch.Tensor, out: torch.Tensor,
                      lse: Optional[torch.Tensor], indptr: Optional[torch.Tensor] = None,
                      sinks: Optional[torch.Tensor] = None):
    """Merge partial states into out/lse.

    Without indptr: v_part [S, N, H, D] fp32, s_part [S, N, H] -> out [N, H, D], lse [N, H].
    With indptr [N + 1]: v_part [P, H, D], s_part [P, H]; row n merges partial rows
    indptr[n]:indptr[n + 1] (rows with none are skipped: the kernel wrote them directly).
    sinks [H'] (natural log): head h's sink logit sinks[h % H'] joins the denominator.
    """
    n, h, d = out.shape
    if n * h == 0:
        return None
    split_dim = 0
    return launch(
        merge_states_kernel, (n * h,), num_warps=1 if d <= 64 else 2, num_stages=1,
        v_ptr=v_part, s_ptr=s_part, o_ptr=out, lse_ptr=lse, indptr_ptr=indptr, sinks_ptr=sinks,
        stride_vs=v_part.stride(split_dim), stride_vn=v_part.stride(-3) if indptr is None else 0,
        stride_vh=v_part.stride(-2), stride_ss=s_part.stride(split_dim),
        stride_sn=s_part.stride(-2) if indptr is None else 0, stride_sh=s_part.stride(-1),
        stride_on=out.stride(0), stride_oh=out.stride(1),
        stride_ln=lse.stride(0) if lse is not None else 0, stride_lh=lse.stride(1) if lse is not None else 0,
        num_splits=v_part.shape[0] if indptr is None else 0, num_heads=h, HEAD_DIM=d, BLOCK_D=_pow2(d),
        sink_heads=1 if sinks is None else sinks.shape[0],
        WRITE_LSE=lse is not None, INDPTR=indptr is not None, HAS_SINKS=sinks is not None, BLOCK_S=MERGE_BLOCK_S,
    )


def _outputs(out, lse, num_splits, qo_len, num_qo_heads, head_dim_vo, device):
    """Where the kernel writes: the user's out/lse, or a fp32 split workspace to merge."""
    if num_splits == 1:
        return out, lse, (0, 0)
    o_part = empty_output(num_splits, qo_len, num_qo_heads, head_dim_vo, dtype=torch.float32, device=device)
    s_part = empty_output(num_splits, qo_len, num_qo_heads, dtype=torch.float32, device=device)
    return o_part, s_part, (o_part.stride(0), s_part.stride(0))


def _split(kv_len, num_splits, num_programs, block_n, device):
    if num_splits is None:
        return kv_split(num_programs, kv_len, block_n, device)
    chunk = triton.cdiv(triton.cdiv(max(kv_len, 1), num_splits), block_n) * block_n
    return triton.cdiv(max(kv_len, 1), chunk), chunk


# Arguments of the batch-plan mode that a single-request launch leaves unused.
_NO_BATCH = dict(sinks_ptr=None, HAS_SINKS=False, work_ptr=None, seq_lens_ptr=None, kv_indptr_ptr=None,
                 kv_indices_ptr=None, part_o_ptr=None, part_lse_ptr=None, merge_indptr_ptr=None, counter_ptr=None,
                 stride_w=0, stride_pn=0, stride_ph=0, stride_pln=0, stride_plh=0, stride_kpage=0, stride_vpage=0,
                 BATCHED=False, PAGED=False, PAGE_SIZE=1)


def attention_fwd(q, k, v, out, lse, variant: Variant, *, packed_mask=None, alibi_slopes=None,
                  num_splits: Optional[int] = None, head_scales: Optional[tuple] = None) -> None:
    """Tensor-core attention of one request. out [qo_len, H_qo, D_vo]; lse [qo_len, H_qo] or None.
    head_scales: fp32 (scale_q [H_qo], scale_k [H_kv], scale_v [H_kv]) for fp8 q/k/v."""
    qo_len, num_qo_heads, d_qk = q.shape
    kv_len, num_kv_heads, d_vo = v.shape
    if qo_len == 0:
        return
    group = num_qo_heads // num_kv_heads
    block_dqk, block_dvo = _pow2(d_qk), _pow2(d_vo)
    tile = prefill_tile(max(block_dqk, block_dvo), qo_len * group, variant.use_rope, packed_mask is not None)
    m_tiles = triton.cdiv(qo_len * group, tile.block_m)
    num_splits, chunk = _split(kv_len, num_splits, m_tiles * num_kv_heads, tile.block_n, q.device)
    o_buf, l_buf, (stride_os, stride_ls) = _outputs(out, lse, num_splits, qo_len, num_qo_heads, d_vo, q.device)
    use_tma = kv_tma(k, v, (k.stride(0), k.stride(1), v.stride(0), v.stride(1)), paged=False, use_rope=variant.use_rope)
    launch(
        attention_fwd_kernel, (m_tiles, num_kv_heads, num_splits),
        num_warps=tile.num_warps, num_stages=tile.num_stages,
        q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=o_buf, lse_ptr=l_buf, mask_ptr=packed_mask, mask_indptr_ptr=None,
        alibi_ptr=alibi_slopes, qo_indptr_ptr=None, **_NO_BATCH,
        stride_qn=q.stride(0), stride_qh=q.stride(1), stride_kn=k.stride(0), stride_kh=k.stride(1),
        stride_vn=v.stride(0), stride_vh=v.stride(1),
        stride_os=stride_os, stride_on=o_buf.stride(-3), stride_oh=o_buf.stride(-2),
        stride_ls=stride_ls, stride_ln=l_buf.stride(-2) if l_buf is not None else 0,
        stride_lh=l_buf.stride(-1) if l_buf is not None else 0,
        qo_len=qo_len, kv_len=kv_len, group_size=group, kv_chunk=chunk,
        HEAD_DIM_QK=d_qk, HEAD_DIM_VO=d_vo, BLOCK_DQK=block_dqk, BLOCK_DVO=block_dvo,
        BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
        IS_CAUSAL=variant.causal and packed_mask is None, HAS_MASK=packed_mask is not None,
        WRITE_LSE=l_buf is not None, DOT_F16=k.element_size() == 1, HAS_PARTIALS=False,
        KV_TMA=use_tma, WARP_SPEC=use_tma and tile.warp_spec, TWO_PHASE=True, part_indptr_ptr=None,
        PARTIALS_BY_TOKEN=False, HEAD_SCALES=head_scales is not None, FP8_QK=fp8_qk(q, k), HEADS_ADJACENT=False,
        **dict(zip(("scale_q_ptr", "scale_k_ptr", "scale_v_ptr"), head_scales or (None, None, None))),
        **variant.kernel_args(),
    )
    if num_splits > 1:
        merge_states_into(o_buf, l_buf, out, lse)


def decode_fwd(q, k, v, out, lse, variant: Variant, *, alibi_slopes=None,
               num_splits: Optional[int] = None) -> None:
    """CUDA-core attention of one query token. q [H_qo, D_qk], out [H_qo, D_vo], lse [H_qo] or None."""
    num_qo_heads, d_qk = q.shape
    kv_len, num_kv_heads, d_vo = v.shape
    group = num_qo_heads // num_kv_heads
    block_dqk, block_dvo = _pow2(d_qk), _pow2(d_vo)
    tile = decode_tile(triton.next_power_of_2(group), max(block_dqk, block_dvo))
    num_splits, chunk = _split(kv_len, num_splits, num_kv_heads, tile.block_n, q.device)
    out, lse = out[None], None if lse is None else lse[None]
    o_buf, l_buf, (stride_os, stride_ls) = _outputs(out, lse, num_splits, 1, num_qo_heads, d_vo, q.device)
    launch(
        decode_fwd_kernel, (1, num_kv_heads, num_splits), num_warps=tile.num_warps, num_stages=tile.num_stages,
        q_ptr=q[None], k_ptr=k, v_ptr=v, o_ptr=o_buf, lse_ptr=l_buf, alibi_ptr=alibi_slopes, **_NO_BATCH,
        stride_qn=0, stride_qh=q.stride(0), stride_kn=k.stride(0), stride_kh=k.stride(1),
        stride_vn=v.stride(0), stride_vh=v.stride(1),
        stride_os=stride_os, stride_on=0, stride_oh=o_buf.stride(-2), stride_ls=stride_ls, stride_ln=0,
        stride_lh=l_buf.stride(-1) if l_buf is not None else 0,
        kv_len=kv_len, group_size=group, kv_chunk=chunk,
        HEAD_DIM_QK=d_qk, HEAD_DIM_VO=d_vo, BLOCK_DQK=block_dqk, BLOCK_DVO=block_dvo,
        BLOCK_G=tile.block_m, BLOCK_N=tile.block_n, WRITE_LSE=l_buf is not None, **variant.kernel_args(),
    )
    if num_splits > 1:
        merge_states_into(o_buf, l_buf, out, lse)
