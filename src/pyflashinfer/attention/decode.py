"""Batch decode over a paged KV cache: FlashInfer's `BatchDecodeWithPagedKVCacheWrapper`.

The wrapper is a thin shell: `plan()` calls the host-only planner (plan.py) and keeps the
frozen plan it returns; `run()` checks its inputs against the plan and launches (never syncs,
allocates nothing in CUDA-graph mode). `fast_decode_plan` re-plans a new page table under the
last plan's static arguments without checking or deriving them again.

With q_len_per_req = n > 1 (speculative decode), each request has n query tokens, causal among
themselves and aligned bottom-right: token i of a request with kv_len L sits at position
L - n + i and sees keys 0 .. L - n + i.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import torch
import triton

from .. import _validate as V
from .._launch import aligned16, empty_output, replay_key
from ..page import PagedKVCache, unpack_paged_kv_cache
from ..utils import PosEncodingMode, get_alibi_slopes, is_interpreting, num_sms
from .batch_launch import paged_decode
from .launch import Variant, _pow2, decode_tile
from .host_checks import cache_ref, host_page_table, planned_dtypes, run_outputs, same_cache
from .plan import DecodePlan, build_decode_buffer, buffer_len, choose_chunk, max_work_items, window_start

_LEGACY_PLAN_ARGS = ("pos_encoding_mode", "window_left", "logits_soft_cap", "q_data_type", "kv_data_type",
                     "o_data_type", "data_type", "sm_scale", "rope_scale", "rope_theta", "non_blocking",
                     "block_tables", "seq_lens", "fixed_split_size", "disable_split_kv", "q_len_per_req")

# Tensor-core path, by KV element size: BLOCK_N, (warps, stages) for the KV loop, whether the
# kernel runs its unmasked tiles in a loop of their own, and the programs of the tile that fit on
# one SM (the plan splits KV to fill SMs x that many; see plan.choose_chunk). Decode is memory
# bound: the tile must keep enough bytes in flight per program, and a launch must fill whole waves
# of program slots. The pipeliner gives K/V stages - 1 buffers (page ids read a tile ahead).
# bf16: 64 x 8 warps x 4 stages led `bench_decode.py --sweep` on the H200 (2026-12-02, per CUDA-graph
# replay, gqa4 bs64 kv4096 / gqa4 bs256 kv2048 / gqa4 bs16 kv32768 / mha bs64 kv4096: 4,193 / 4,144 /
# 4,285 / 4,277 GB/s; 64 x 4 x 4: 4,136 / 4,070 / 4,287 / 4,232; 128 x 8 x 3, one program per SM:
# 3,347 / 3,359 / 3,392 / 3,525); its sm_90 d128 build takes 118 registers and 104 KB of shared
# memory: two programs per SM.
# fp8 (V read by 16-bit pairs, kernels/prefill.py fp8_v_pairs): the register count ptxas gives the
# tile moves with code outside the KV loop (the fused merge took 128 x 4 x 3 from 197 registers, two
# programs per SM, to 126, three; its loop's PTX unchanged), and each tile reads fast where its
# programs fill whole waves of its slots. 64 x 4 x 3 (118 registers: 4 per SM) led on the H100
# (2026-12-06, per replay, heads adjacent, gqa4 bs64 kv4096 / gqa4 bs256 kv2048 / gqa4 bs16 kv32768:
# 2,780 / 2,806 / 2,867 GB/s, bs1 kv4096 10.7 us; 128 x 4 x 4, 2 per SM: 2,751 / 2,787 / 2,870,
# 10.9 us; without heads adjacent 2,705 / 2,762 / 2,724 against 2,650 / 2,672 / 2,868).
TC_DECODE_TILES = {2: dict(block_n=64, num_warps=8, num_stages=4, two_phase=False, programs_per_sm=2),
                   1: dict(block_n=64, num_warps=4, num_stages=3, two_phase=True, programs_per_sm=4)}


def tc_decode_tile(kv_itemsize: int, head_dim: int) -> dict:
    """The tensor-core decode tile for a KV element size and head dim: TC_DECODE_TILES (chosen at
    d128), with BLOCK_N cut so that a tile holds no more bytes than at d128 (d256's K/V buffers
    would not fit in shared memory)."""
    cfg = TC_DECODE_TILES[kv_itemsize]
    return {**cfg, "block_n": max(16, cfg["block_n"] * 128 // max(128, _pow2(head_dim)))}


# q_len_per_req > 1: a request's n x group rows go in row tiles of at most this many rows
# (prefill's d256 BLOCK_M; not yet measured for decode).
TC_DECODE_MAX_BLOCK_M = 64


# use_tensor_cores=None picks tensor cores for every group size and dtype: on the H100
# (benchmarks/RESULTS.md, 2026-11-23) the tensor-core path beat our CUDA-core path on every
# decode workload, MHA included (2,785 vs 1,474 GB/s at mha bs64 kv4096).
DEFAULT_TENSOR_CORES = True


@dataclass(frozen=True)
class _Statics:
    """What plan() derives from its static arguments (`key`: all but the page table and
    non_blocking); fast_decode_plan reuses it while they repeat."""
    key: tuple
    plan_fields: dict                # the DecodePlan fields they fix
    row_tiles: int                   # per request and KV chunk
    programs_per_sm: int             # of the launch's tile: the plan fills SMs x this many program slots
    split_tokens: Optional[int]      # fixed_split_size in tokens
    disable_split_kv: bool
    launch_cfg: tuple                # (num_warps, num_stages, maxnreg; 0 = no register cap)
    two_phase: bool                  # tensor cores: unmasked KV tiles first (kernels/prefill.py)
    alibi: Optional[torch.Tensor]


def _fill(buf: torch.Tensor, src: torch.Tensor, non_blocking: bool) -> None:
    """buf[:len(src)] = src, skipped where src already is that part of buf (a caller that
    writes the CUDA-graph buffers itself passes them)."""
    if src.data_ptr() == buf.data_ptr() and src.dtype == buf.dtype and src.stride() == buf.stride():
        return
    buf[: src.shape[0]].copy_(src, non_blocking=non_blocking)


class BatchDecodeWithPagedKVCacheWrapper:
    r"""Decode attention for a batch of requests over a paged KV cache.

    Example::

        ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
        wrapper = BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
        wrapper.plan(kv_indptr, kv_indices, kv_last_page_len, 32, 8, 128, 16, q_data_type=torch.bfloat16)
        out = wrapper.run(q, (k_cache, v_cache))      # q [B, 32, 128] -> out [B, 32, 128]

    Args:
        float_workspace_buffer: uint8/int8 device buffer for split-KV partial states (128 MB is ample).
        kv_layout: "NHD" or "HND" (see :mod:`pyflashinfer.page`).
        use_cuda_graph: freeze the batch size and keep every launch parameter independent of the
            plan, so a graph captured around `run` stays correct after later `plan` calls.
        use_tensor_cores: True/False chooses the path; None (default) picks by group size and dtype.
        paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer: the
            device buffers `plan` copies the page table into (CUDA-graph mode, required there).
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 use_tensor_cores: Optional[bool] = None, paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
                 paged_kv_indices_buffer: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = "auto",
                 jit_args: Optional[Any] = None) -> None:
        V.check_kv_layout(kv_layout)
        V.check_tensor("float_workspace_buffer", float_workspace_buffer, 1)
        self._layout = kv_layout
        self._workspace = float_workspace_buffer
        self._device = float_workspace_buffer.device
        self._use_tensor_cores = use_tensor_cores
        self._use_cuda_graph = use_cuda_graph
        self._plan: Optional[DecodePlan] = None
        self._statics: Optional[_Statics] = None
        self._buffer: Optional[torch.Tensor] = None
        self._counters: Optional[torch.Tensor] = None
        if use_cuda_graph:
            for name, buf in (("paged_kv_indptr_buffer", paged_kv_indptr_buffer),
                              ("paged_kv_indices_buffer", paged_kv_indices_buffer),
                              ("paged_kv_last_page_len_buffer", paged_kv_last_page_len_buffer)):
                if buf is None:
                    raise ValueError(f"use_cuda_graph=True needs {name} (a device tensor the plan writes into)")
                V.check_tensor(name, buf, 1)
            if paged_kv_indptr_buffer.shape[0] != paged_kv_last_page_len_buffer.shape[0] + 1:
                raise ValueError(f"paged_kv_indptr_buffer ({paged_kv_indptr_buffer.shape[0]}) must be one longer than "
                                 f"paged_kv_last_page_len_buffer ({paged_kv_last_page_len_buffer.shape[0]})")
            self._fixed_batch = paged_kv_last_page_len_buffer.shape[0]
        self._indptr_buf = paged_kv_indptr_buffer
        self._indices_buf = paged_kv_indices_buffer
        self._last_page_len_buf = paged_kv_last_page_len_buffer
        self._kv_indices: Optional[torch.Tensor] = None
        self._replays = None  # the last run's launches (GPU), reused while only q/out/lse change
        self._replay_plan = self._replay_cache = self._replay_sig = None

    @property
    def use_tensor_cores(self) -> Optional[bool]:
        return self._use_tensor_cores if self._plan is None else self._plan.use_tensor_cores

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def plan_value(self) -> Optional[DecodePlan]:
        """The frozen plan `run` executes (None before `plan`)."""
        return self._plan

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        self._workspace = float_workspace_buffer

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim: int, page_size: int, *deprecated_positional_args: Any,
             pos_encoding_mode: str = "NONE", window_left: int = -1, window_right: int = 0,
             logits_soft_cap: Optional[float] = None, q_data_type: Optional[Union[str, torch.dtype]] = "float16",
             kv_data_type: Optional[Union[str, torch.dtype]] = None,
             o_data_type: Optional[Union[str, torch.dtype]] = None,
             data_type: Optional[Union[str, torch.dtype]] = None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, non_blocking: bool = True,
             block_tables: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, q_len_per_req: int = 1,
             check_indices: bool = False) -> None:
        """Plan decode for a batch: host-side, may sync (it reads the page table's indptr and
        last_page_len on the host), one host-to-device copy. The page table:
        indptr [B+1], indices [indptr[-1]] (page ids), last_page_len [B] in [1, page_size]
        (0 for an empty request). q_len_per_req > 1: n query tokens per request (q is
        [B * n, H_qo, D]), causal among them; it needs tensor cores. `check_indices=True` also
        reads the page ids (a sync) to reject negative ones; `run` then rejects ids past the
        cache's last page."""
        if deprecated_positional_args:
            if len(deprecated_positional_args) > len(_LEGACY_PLAN_ARGS):
                raise TypeError(f"plan() takes at most {7 + len(_LEGACY_PLAN_ARGS)} positional arguments")
            legacy = dict(zip(_LEGACY_PLAN_ARGS, deprecated_positional_args))
            return BatchDecodeWithPagedKVCacheWrapper.plan(
                self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                **{**dict(pos_encoding_mode=pos_encoding_mode, window_left=window_left,
                          logits_soft_cap=logits_soft_cap, q_data_type=q_data_type, kv_data_type=kv_data_type,
                          o_data_type=o_data_type, data_type=data_type, sm_scale=sm_scale, rope_scale=rope_scale,
                          rope_theta=rope_theta, non_blocking=non_blocking, fixed_split_size=fixed_split_size,
                          disable_split_kv=disable_split_kv, q_len_per_req=q_len_per_req,
                          check_indices=check_indices), **legacy})
        if window_right != 0:
            raise NotImplementedError("window_right is not supported (FlashInfer supports it only in cute-dsl)")
        if block_tables is not None or seq_lens is not None:
            raise NotImplementedError("block_tables/seq_lens (trtllm-style page tables) are not supported; "
                                      "pass indptr/indices/last_page_len")
        statics = self._statics_for(num_qo_heads, num_kv_heads, head_dim, page_size, pos_encoding_mode, window_left,
                                    logits_soft_cap, q_data_type, kv_data_type, o_data_type, data_type, sm_scale,
                                    rope_scale, rope_theta, fixed_split_size, disable_split_kv, q_len_per_req)
        self._make_plan(statics, indptr, indices, last_page_len, non_blocking, check_indices=check_indices)

    begin_forward = plan

    def _statics_for(self, *key) -> _Statics:
        """Check plan()'s static arguments (in the order of `key`) and derive what they fix."""
        (num_qo_heads, num_kv_heads, head_dim, page_size, pos_encoding_mode, window_left, logits_soft_cap,
         q_data_type, kv_data_type, o_data_type, data_type, sm_scale, rope_scale, rope_theta, fixed_split_size,
         disable_split_kv, n) = key
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"q_len_per_req: expected an int >= 1 (query tokens per request), got {n!r}")
        if n > 1 and self._use_tensor_cores is False:
            raise ValueError(f"q_len_per_req={n} needs the tensor-core path, but this wrapper was built with "
                             "use_tensor_cores=False; build it with use_tensor_cores=True (or None)")
        V.check_heads(num_qo_heads, num_kv_heads)
        V.check_head_dim("head_dim", head_dim)
        q_dtype, kv_dtype, o_dtype = planned_dtypes(q_data_type, kv_data_type, o_data_type, data_type)
        mode = V.check_pos_encoding_mode(pos_encoding_mode)
        V.check_window_left(window_left)

        group = num_qo_heads // num_kv_heads
        use_tc = n > 1 or (DEFAULT_TENSOR_CORES if self._use_tensor_cores is None else self._use_tensor_cores)
        if use_tc:
            cfg = tc_decode_tile(kv_dtype.itemsize, head_dim)
            block_m = _pow2(group) if n == 1 else min(TC_DECODE_MAX_BLOCK_M, _pow2(n * group))
            block_n, num_warps, num_stages = cfg["block_n"], cfg["num_warps"], cfg["num_stages"]
            maxnreg = cfg.get("maxnreg", 0)
            two_phase, programs_per_sm = cfg["two_phase"], cfg["programs_per_sm"]
        else:
            two_phase, programs_per_sm = False, 2  # the plans' old assumption; not measured for this path
            tile = decode_tile(max(1, 1 << (group - 1).bit_length()), max(16, 1 << (head_dim - 1).bit_length()))
            block_m, block_n, num_warps, num_stages = tile.block_m, tile.block_n, tile.num_warps, tile.num_stages
            maxnreg = 0
        variant = Variant(sm_scale=1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale),
                          window_left=window_left, soft_cap=V.check_soft_cap(logits_soft_cap),
                          use_rope=mode == PosEncodingMode.ROPE_LLAMA,
                          rope_scale=1.0 if rope_scale is None else float(rope_scale),
                          rope_theta=1e4 if rope_theta is None else float(rope_theta),
                          use_alibi=mode == PosEncodingMode.ALIBI)
        return _Statics(
            key=key,
            plan_fields=dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                             page_size=page_size, q_dtype=q_dtype, kv_dtype=kv_dtype, o_dtype=o_dtype,
                             variant=variant, use_tensor_cores=bool(use_tc), q_len_per_req=n, block_m=block_m,
                             block_n=block_n),
            row_tiles=triton.cdiv(n * group, block_m), programs_per_sm=programs_per_sm,
            split_tokens=None if fixed_split_size is None else fixed_split_size * page_size,
            disable_split_kv=disable_split_kv, launch_cfg=(num_warps, num_stages, maxnreg), two_phase=two_phase,
            alibi=get_alibi_slopes(num_qo_heads).to(self._device) if mode == PosEncodingMode.ALIBI else None)

    def _make_plan(self, st: _Statics, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor,
                   non_blocking: bool, check_indices: bool = False, indptr_host: Optional[torch.Tensor] = None,
                   read_last_page_len: bool = True) -> None:
        """The page-table half of a plan: work list, buffers and the DecodePlan under statics st
        (indptr_host and read_last_page_len: see host_page_table)."""
        f = st.plan_fields
        num_qo_heads, num_kv_heads, head_dim = f["num_qo_heads"], f["num_kv_heads"], f["head_dim"]
        n = f["q_len_per_req"]
        indptr_h, seq = host_page_table(indptr, indices, last_page_len, f["page_size"], indptr_host=indptr_host,
                                        read_last_page_len=read_last_page_len)
        batch = seq.numel()
        if check_indices and indices.numel() and int(indices[: int(indptr_h[-1])].min()) < 0:
            raise ValueError("indices: page ids must be >= 0")
        if self._use_cuda_graph and batch != self._fixed_batch:
            raise ValueError(f"this CUDA-graph wrapper was built for batch size {self._fixed_batch}, got {batch}")
        if self._use_cuda_graph and self._plan is not None and n != self._plan.q_len_per_req:
            raise ValueError(f"this CUDA-graph wrapper was planned with q_len_per_req={self._plan.q_len_per_req} "
                             f"(q's shape is captured), got {n}")

        slots = num_sms(self._device) * st.programs_per_sm
        block_n, window_left = f["block_n"], f["variant"].window_left
        min_chunk = 4 * block_n if is_interpreting() else max(256, 2 * block_n)
        # The KV each request's rows see: a sliding window leaves the keys from window_start on.
        spans = seq - window_start(torch.full_like(seq, n), seq, window_left, block_n)
        chunk = choose_chunk(spans, num_kv_heads * st.row_tiles, slots, block_n, min_chunk, st.split_tokens,
                             st.disable_split_kv)
        # The grid: exactly the work in eager mode; a bound fixed by the batch size in graph mode.
        max_work = max_work_items(batch, num_kv_heads, slots, st.row_tiles) if self._use_cuda_graph else \
            st.row_tiles * int(torch.clamp((spans + chunk - 1) // chunk, min=1).sum())
        host, num_work, num_partials = build_decode_buffer(seq, indptr_h, chunk, max_work,
                                                           pin=self._device.type == "cuda", q_len_per_req=n,
                                                           row_tiles=st.row_tiles, window_left=window_left,
                                                           kv_align=block_n)

        rows = n * (max_work // st.row_tiles)  # partial rows: n per KV chunk
        need = rows * num_qo_heads * (head_dim + 1) * 4
        if self._workspace.numel() * self._workspace.element_size() < need:
            raise ValueError(f"float_workspace_buffer: this plan needs {need} bytes for split-KV partial states, "
                             f"the buffer has {self._workspace.numel() * self._workspace.element_size()}")
        ws = self._workspace.view(torch.uint8)[:need].view(torch.float32)
        part_o = ws[: rows * num_qo_heads * head_dim].view(rows, num_qo_heads, head_dim)
        part_lse = ws[rows * num_qo_heads * head_dim:].view(rows, num_qo_heads)
        # The fused merge's arrival counters: the wrapper's own (a workspace shared with other
        # wrappers, as FlashInfer's users often share it, would overwrite them), zeroed once and
        # left at zero by every launch; fixed in CUDA-graph mode, where the graph holds their address.
        counters = batch * st.row_tiles * num_kv_heads
        if self._counters is None or self._counters.numel() < counters:
            if self._use_cuda_graph and self._counters is not None:
                raise ValueError("a CUDA-graph plan must keep num_kv_heads, num_qo_heads and q_len_per_req "
                                 "fixed across plans (its grid is captured)")
            self._counters = torch.zeros(max(counters, 1), dtype=torch.int32, device=self._device)

        n_idx = int(indptr_h[-1])
        if self._use_cuda_graph and self._indices_buf.shape[0] < n_idx:
            raise ValueError(f"paged_kv_indices_buffer holds {self._indices_buf.shape[0]} page ids, "
                             f"the plan needs {n_idx}")
        if self._buffer is None or self._buffer.numel() != host.numel() or not self._use_cuda_graph:
            if self._use_cuda_graph and self._buffer is not None:
                raise ValueError("a CUDA-graph plan must keep num_kv_heads, num_qo_heads and q_len_per_req "
                                 "fixed across plans (its grid is captured)")
            self._buffer = torch.empty(buffer_len(batch, max_work), dtype=torch.int32, device=self._device)
        self._buffer.copy_(host, non_blocking=non_blocking)
        if self._use_cuda_graph:
            _fill(self._indptr_buf, indptr, non_blocking)
            _fill(self._last_page_len_buf, last_page_len, non_blocking)
            _fill(self._indices_buf, indices[:n_idx], non_blocking)
            self._kv_indices = self._indices_buf
        else:
            if indices.device != self._device:
                raise ValueError(f"indices: expected a tensor on {self._device}, got one on {indices.device}")
            self._kv_indices = indices
        self._max_page_id = int(indices[:n_idx].max()) if check_indices and n_idx else None
        self._plan = DecodePlan(
            **f, batch_size=batch, kv_chunk=chunk, num_work=num_work, max_work=max_work, num_partials=num_partials,
            max_seq_len=int(seq.max()) if batch else 0, buffer=self._buffer, part_o=part_o, part_lse=part_lse,
            counters=self._counters)
        self._statics = st

    def run(self, q: torch.Tensor, paged_kv_cache: PagedKVCache, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None,
            q_len_per_req: Optional[int] = None, skip_softmax_threshold_scale_factor: Optional[float] = None,
            kv_cache_sf=None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Decode attention of q [B * q_len_per_req, H_qo, D] over the planned pages (request b
        owns rows b * n .. b * n + n - 1). Returns out of q's shape in the planned o dtype (and
        lse [B * n, H_qo], fp32, base 2, with return_lse). q_len_per_req, if given, must repeat
        the planned value. q_scale and k_scale fold into sm_scale, v_scale multiplies the
        output (fp8 calibration). sinks [H_qo]: attention-sink logits (natural log, not scaled
        by sm_scale) that join each row's softmax denominator (and the lse)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("run() before plan(): call plan() with the batch's page table first")
        # Fast path: the same plan, cache object, scales and strides as the last call, so its
        # launches are replayed with the new q/out/lse alone (checked: shape, dtype, alignment).
        sig = replay_key(q, out, lse if return_lse else None, sinks, return_lse, q_scale, k_scale, v_scale,
                         window_left)
        if (sig is not None and sig == self._replay_sig and plan is self._replay_plan
                and same_cache(paged_kv_cache, self._replay_cache) and not args and kv_cache_sf is None
                and skip_softmax_threshold_scale_factor is None and q_len_per_req in (None, plan.q_len_per_req)):
            rows = plan.batch_size * plan.q_len_per_req
            if out is None:
                out = empty_output(rows, plan.num_qo_heads, plan.head_dim, dtype=plan.o_dtype, device=self._device)
            if return_lse and lse is None:
                lse = empty_output(rows, plan.num_qo_heads, dtype=torch.float32, device=self._device)
            tensors = {"q_ptr": q, "o_ptr": out, "lse_ptr": lse, "sinks_ptr": sinks}
            for replay, names in self._replays:
                replay(**{n: tensors[n] for n in names})
            return (out, lse) if return_lse else out
        if args:
            raise TypeError(f"run() got {len(args)} unexpected positional arguments; pass scales as keywords")
        if kv_cache_sf is not None or skip_softmax_threshold_scale_factor is not None:
            raise NotImplementedError("kv_cache_sf and skip_softmax_threshold_scale_factor are not supported")
        sinks = V.check_sinks(sinks, plan.num_qo_heads, self._device)
        if q_len_per_req is not None and q_len_per_req != plan.q_len_per_req:
            raise ValueError(f"q_len_per_req={q_len_per_req} at run differs from {plan.q_len_per_req} given to "
                             "plan(); pass it to plan()")
        if window_left is not None and window_left != plan.variant.window_left:
            raise ValueError(f"window_left={window_left} at run differs from {plan.variant.window_left} given to "
                             "plan(); pass it to plan()")
        cache = unpack_paged_kv_cache(paged_kv_cache, self._layout)
        shape = (plan.batch_size * plan.q_len_per_req, plan.num_qo_heads, plan.head_dim)
        if tuple(q.shape) != shape:
            raise ValueError(f"q: expected shape {shape} (batch * q_len_per_req, num_qo_heads, head_dim) as planned, "
                             f"got {tuple(q.shape)}")
        if q.dtype != plan.q_dtype:
            raise ValueError(f"q: the plan fixed q_data_type={plan.q_dtype}, got {q.dtype}; pass "
                             "q_data_type to plan()")
        if cache.k.dtype != plan.kv_dtype:
            raise ValueError(f"paged_kv_cache: the plan fixed kv_data_type={plan.kv_dtype}, got {cache.k.dtype}")
        if (cache.page_size, cache.num_kv_heads, cache.head_dim) != (plan.page_size, plan.num_kv_heads, plan.head_dim):
            raise ValueError(f"paged_kv_cache: expected page_size {plan.page_size}, {plan.num_kv_heads} kv heads, "
                             f"head_dim {plan.head_dim} as planned, got {cache.page_size}, {cache.num_kv_heads}, "
                             f"{cache.head_dim}")
        if q.stride(-1) != 1:
            raise ValueError(f"q: the last dimension must have stride 1, got strides {tuple(q.stride())}")
        if q.device != self._device or cache.k.device != self._device:
            raise ValueError(f"q and paged_kv_cache must be on the workspace's device {self._device}, got "
                             f"{q.device} and {cache.k.device}")
        if self._max_page_id is not None and self._max_page_id >= cache.k.shape[0]:
            raise ValueError(f"indices: page id {self._max_page_id} is past the cache's {cache.k.shape[0]} pages")
        out, lse = run_outputs(out, lse, return_lse, shape, plan.o_dtype, self._device)
        var = plan.variant
        sm_scale = var.sm_scale * (1.0 if q_scale is None else float(q_scale)) * (1.0 if k_scale is None else float(k_scale))
        num_warps, num_stages, maxnreg = self._statics.launch_cfg
        replays = paged_decode(
            q=q, k=cache.k, v=cache.v, kv_indices=self._kv_indices, plan_buf=plan.buffer, part_o=plan.part_o,
            part_lse=plan.part_lse, counters=plan.counters, out=out, lse=lse, alibi=self._statics.alibi,
            batch=plan.batch_size, max_work=plan.max_work, hnd=self._layout == "HND",
            use_tensor_cores=plan.use_tensor_cores,
            block_n=plan.block_n, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg,
            sm_scale=sm_scale, soft_cap=var.soft_cap, window_left=var.window_left, rope_rcp_scale=1.0 / var.rope_scale,
            rope_log2_theta=math.log2(var.rope_theta), v_scale=1.0 if v_scale is None else float(v_scale),
            use_rope=var.use_rope, use_alibi=var.use_alibi, q_len_per_req=plan.q_len_per_req, block_m=plan.block_m,
            sinks=sinks, two_phase=self._statics.two_phase,
            has_partials=self._use_cuda_graph or plan.num_partials > 0)
        if replays is not None and all(r is not None for r, _ in replays) and \
                aligned16(q, out, lse, sinks, cache.k, cache.v):
            self._replays, self._replay_plan, self._replay_cache, self._replay_sig = \
                replays, plan, cache_ref(paged_kv_cache), sig
        return (out, lse) if return_lse else out

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, paged_kv_cache, *args, **kwargs):
        """Deprecated alias of run()."""
        return self.run(q, paged_kv_cache, *args, **kwargs)

    def forward_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        return self.run(q, paged_kv_cache, *args, return_lse=True, **kwargs)

    def end_forward(self) -> None:
        """No-op, kept for compatibility."""


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """BatchDecodeWithPagedKVCacheWrapper in CUDA-graph mode, FlashInfer's positional order."""

    def __init__(self, workspace_buffer: torch.Tensor, indptr_buffer: torch.Tensor, indices_buffer: torch.Tensor,
                 last_page_len_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_tensor_cores: Optional[bool] = None) -> None:
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer)


def fast_decode_plan(self: BatchDecodeWithPagedKVCacheWrapper, indptr: torch.Tensor, indices: torch.Tensor,
                     last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                     page_size: int, pos_encoding_mode: str = "NONE", window_left: int = -1,
                     logits_soft_cap: Optional[float] = None, q_data_type: Optional[Union[str, torch.dtype]] = None,
                     kv_data_type: Optional[Union[str, torch.dtype]] = None,
                     data_type: Optional[Union[str, torch.dtype]] = None, sm_scale: Optional[float] = None,
                     rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
                     non_blocking: bool = True, fixed_split_size: Optional[int] = None,
                     disable_split_kv: bool = False, q_len_per_req: int = 1,
                     global_override_indptr_cpu: Optional[torch.Tensor] = None) -> None:
    """`plan()` for repeated decode steps, FlashInfer's `fast_decode_plan`. Patch it onto a
    wrapper after one normal plan::

        wrapper.plan(...)
        wrapper.plan = functools.partial(pyflashinfer.fast_decode_plan, wrapper)

    It makes the plan plan() would. While the static arguments (all but the page table and
    non_blocking; q_data_type None means "float16") equal the last plan's, it does not check or
    derive them again and only rebuilds the work list from the page table; otherwise, or
    before any plan, it is the full plan(). global_override_indptr_cpu: a CPU tensor equal to
    indptr, read instead of it (no device-to-host copy of indptr). On the fast path with
    page_size 1, last_page_len is not read either (a non-empty request's last page holds its
    one token), so with the override such a plan makes no device-to-host copy at all.
    """
    key = (num_qo_heads, num_kv_heads, head_dim, page_size, pos_encoding_mode, window_left, logits_soft_cap,
           "float16" if q_data_type is None else q_data_type, kv_data_type, None, data_type, sm_scale, rope_scale,
           rope_theta, fixed_split_size, disable_split_kv, q_len_per_req)
    statics = self._statics
    fast = statics is not None and statics.key == key
    if not fast:
        statics = self._statics_for(*key)
    self._make_plan(statics, indptr, indices, last_page_len, non_blocking, indptr_host=global_override_indptr_cpu,
                    read_last_page_len=not fast)
