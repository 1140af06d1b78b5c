"""Batch prefill: FlashInfer's `BatchPrefillWithRaggedKVCacheWrapper` and
`BatchPrefillWithPagedKVCacheWrapper`.

Thin shells over a frozen `PrefillPlan` (plan.py): `plan()` reads the indptrs on the host and
makes one host-to-device copy; `run()` checks its inputs against the plan and launches once.
Each request's causal mask is aligned bottom-right (query i of a request with qo_len queries and
kv_len keys sits at position kv_len - qo_len + i), so qo_len < kv_len is chunked prefill.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Tuple, Union

import torch
import triton

from .. import _validate as V
from ..packbits import segment_packbits
from .._launch import empty_output, replay_key
from ..page import PagedKVCache, unpack_paged_kv_cache
from ..utils import PosEncodingMode, get_alibi_slopes, is_interpreting, num_sms
from .batch_launch import prefill_launch
from .host_checks import cache_ref, host_indptr, host_page_table, planned_dtypes, run_outputs, same_cache
from .launch import SHORT_TILE, Variant, batch_prefill_tile, hopper_covers, kv_copied, mean_keys, prepass_len
from .plan import PrefillPlan, buffer_len, build_prefill_buffer, choose_chunk, window_start

_BACKENDS = ("auto", "fa2", "fa3", "cudnn", "trtllm-gen", "cute-dsl")


class _BatchPrefillWrapper:
    """What the ragged and the paged wrappers share: the workspace, the plan, the launch."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 backend: str = "auto", graph_buffers: Optional[dict] = None,
                 mask_buffers: tuple = (None, None)) -> None:
        V.check_kv_layout(kv_layout)
        V.check_tensor("float_workspace_buffer", float_workspace_buffer, 1)
        self._use_cuda_graph = use_cuda_graph
        self._graph_buffers = {}
        if use_cuda_graph:  # the device buffers plan() copies the batch's tables into
            for name, buf in graph_buffers.items():
                if buf is None:
                    raise ValueError(f"use_cuda_graph=True needs {name} (a device tensor the plan writes into)")
                V.check_tensor(name, buf, 1)
            self._graph_buffers = graph_buffers
            self._fixed_batch = graph_buffers["qo_indptr_buf"].shape[0] - 1
        self._mask_buffers = mask_buffers  # (custom_mask_buf uint8, mask_indptr_buf): graph plans with masks
        self._graph = None  # what the first CUDA-graph plan fixed (see _graph_plan)
        if backend not in _BACKENDS:
            raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
        self._backend = backend
        self._layout = kv_layout
        self._workspace = float_workspace_buffer
        self._device = float_workspace_buffer.device
        self._plan: Optional[PrefillPlan] = None
        self._replay = self._replay_key = self._replay_cache = None  # run()'s last launch (GPU)

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def plan_value(self) -> Optional[PrefillPlan]:
        return self._plan

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        """Takes effect at the next plan()."""
        self._workspace = float_workspace_buffer
        self._device = float_workspace_buffer.device

    def end_forward(self) -> None:
        """No-op, kept for compatibility."""

    def _make_plan(self, qo_indptr, kv_indptr_h, seq_lens_h, page_size, num_qo_heads, num_kv_heads, head_dim_qk,
                   head_dim_vo, custom_mask, packed_custom_mask, causal, pos_encoding_mode, sm_scale, window_left,
                   logits_soft_cap, rope_scale, rope_theta, q_data_type, kv_data_type, o_data_type,
                   non_blocking, fixed_split_size, disable_split_kv) -> None:
        V.check_heads(num_qo_heads, num_kv_heads)
        head_dim_vo = head_dim_qk if head_dim_vo is None else head_dim_vo
        V.check_head_dim("head_dim_qk", head_dim_qk)
        V.check_head_dim("head_dim_vo", head_dim_vo)
        batch = seq_lens_h.numel()
        qo_h = host_indptr("qo_indptr", qo_indptr, batch + 1)
        q_dtype, kv_dtype, o_dtype = planned_dtypes(q_data_type, kv_data_type, o_data_type, allow_fp8_q=True)
        mode = V.check_pos_encoding_mode(pos_encoding_mode)
        if q_dtype in V.FP8_TYPES and mode == PosEncodingMode.ROPE_LLAMA:
            raise NotImplementedError("RoPE applied in the kernel needs 16-bit q; apply RoPE before quantising q")
        V.check_window_left(window_left)
        qo_lens = qo_h[1:] - qo_h[:-1]

        packed, mask_indptr = None, None
        if custom_mask is not None or packed_custom_mask is not None:
            sizes = (qo_lens * seq_lens_h).to(torch.int64)
            elem_indptr = torch.zeros(batch + 1, dtype=torch.int64)
            elem_indptr[1:] = torch.cumsum(sizes, 0)
            if custom_mask is not None:
                V.check_tensor("custom_mask", custom_mask, 1)
                if custom_mask.dtype != torch.bool:
                    raise TypeError(f"custom_mask: expected dtype torch.bool, got {custom_mask.dtype}")
                if custom_mask.numel() != int(elem_indptr[-1]):
                    raise ValueError(f"custom_mask: expected {int(elem_indptr[-1])} entries (the flattened "
                                     f"[qo_len, kv_len] masks of all requests), got {custom_mask.numel()}")
                packed, mask_indptr = segment_packbits(custom_mask.to(self._device),
                                                       elem_indptr.to(self._device), bitorder="little")
            else:
                V.check_tensor("packed_custom_mask", packed_custom_mask, 1)
                if packed_custom_mask.dtype != torch.uint8:
                    raise TypeError(f"packed_custom_mask: expected uint8, got {packed_custom_mask.dtype}")
                byte_indptr = torch.zeros(batch + 1, dtype=torch.int64)
                byte_indptr[1:] = torch.cumsum((sizes + 7) // 8, 0)
                if packed_custom_mask.numel() < int(byte_indptr[-1]):
                    raise ValueError(f"packed_custom_mask: expected {int(byte_indptr[-1])} bytes (each request's "
                                     f"mask packed on its own, as segment_packbits does), got {packed_custom_mask.numel()}")
                packed, mask_indptr = packed_custom_mask.to(self._device), byte_indptr.to(self._device)
            mask_indptr = mask_indptr.to(torch.int64)

        group = num_qo_heads // num_kv_heads
        total_qo = int(qo_h[-1])
        # The keys a row sees on average (a custom mask counted as none masked): short work takes its own tile.
        keys = mean_keys(qo_lens, seq_lens_h - window_start(qo_lens, seq_lens_h, window_left, SHORT_TILE.block_n),
                         bool(causal) and packed is None)
        diagonal = bool(causal) or packed is not None  # rows that end on a diagonal or a mask
        graph = self._graph_plan(batch, total_qo, group, packed, num_qo_heads, head_dim_qk, head_dim_vo, mode,
                                 (q_dtype, kv_dtype), page_size, keys, diagonal)
        if graph is not None and packed is not None:  # the captured launch reads the caller's mask buffers
            mask_buf, indptr_buf = self._mask_buffers
            if mask_buf.numel() < packed.numel():
                raise ValueError(f"custom_mask_buf holds {mask_buf.numel()} bytes, the plan's packed mask "
                                 f"{packed.numel()}")
            mask_buf[: packed.numel()].copy_(packed, non_blocking=non_blocking)
            indptr_buf[: batch + 1].copy_(mask_indptr, non_blocking=non_blocking)
            packed, mask_indptr = mask_buf, indptr_buf
        if graph is not None:  # the grid, the tile and every pointer stay those of the first plan
            tile, max_work = graph["tile"], graph["max_work"]
        else:
            max_rows = int(qo_lens.max()) * group if batch else 1
            tile = self._tile(max(max_rows, 1), head_dim_qk, head_dim_vo, mode, (q_dtype, kv_dtype), page_size,
                              packed is not None, keys, diagonal)
            max_work = None
        tiles = (qo_lens * group + tile.block_m - 1) // tile.block_m
        min_chunk = 4 * tile.block_n if is_interpreting() else max(1024, 4 * tile.block_n)
        spans = seq_lens_h - window_start(qo_lens, seq_lens_h, window_left, tile.block_n)  # the KV a window leaves
        chunk = choose_chunk(spans, tiles * num_kv_heads, 2 * num_sms(self._device), tile.block_n,
                             min_chunk, None if fixed_split_size is None else fixed_split_size * max(page_size, 1),
                             disable_split_kv)
        host, num_work, num_partials = build_prefill_buffer(
            qo_h, kv_indptr_h, seq_lens_h, group, tile.block_m, causal=bool(causal) and packed is None,
            chunk=chunk, pin=self._device.type == "cuda", max_work=max_work,
            max_qo=None if graph is None else graph["max_qo"], window_left=window_left, kv_align=tile.block_n)
        if graph is not None:
            buf = graph["buffer"]
            self._graph_buffers["qo_indptr_buf"].copy_(qo_indptr, non_blocking=non_blocking)
        else:
            buf = torch.empty(host.numel(), dtype=torch.int32, device=self._device)
        buf.copy_(host, non_blocking=non_blocking)
        part_o = part_lse = None
        if graph is not None:  # fixed views sized for the most partial rows a graph plan may write
            part_o, part_lse = graph["partials"]
            if num_partials > part_o.shape[0]:
                raise ValueError(f"this plan writes {num_partials} partial rows, the CUDA-graph workspace holds "
                                 f"{part_o.shape[0]}; pass a smaller fixed_split_size or disable_split_kv=True")
        elif num_partials:  # split requests' partial states live in the float workspace
            part_o, part_lse = self._partials(num_partials, num_qo_heads, head_dim_vo)
        self._plan = PrefillPlan(
            batch_size=batch, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim_qk=head_dim_qk,
            head_dim_vo=head_dim_vo, page_size=page_size, q_dtype=q_dtype, kv_dtype=kv_dtype, o_dtype=o_dtype,
            variant=Variant(sm_scale=1.0 / math.sqrt(head_dim_qk) if sm_scale is None else float(sm_scale),
                            causal=bool(causal), window_left=window_left, soft_cap=V.check_soft_cap(logits_soft_cap),
                            use_rope=mode == PosEncodingMode.ROPE_LLAMA,
                            rope_scale=1.0 if rope_scale is None else float(rope_scale),
                            rope_theta=1e4 if rope_theta is None else float(rope_theta),
                            use_alibi=mode == PosEncodingMode.ALIBI),
            block_m=tile.block_m, block_n=tile.block_n, num_warps=tile.num_warps, num_stages=tile.num_stages,
            warp_spec=tile.warp_spec, kv_chunk=chunk, num_work=num_work if total_qo or graph else 0,
            num_partials=num_partials, total_qo=total_qo, total_kv=int(kv_indptr_h[-1]), buffer=buf,
            part_o=part_o, part_lse=part_lse, packed_mask=packed, mask_indptr=mask_indptr,
            max_kv_len=int(seq_lens_h.max()) if batch else 0, maxnreg=tile.maxnreg,
            persistent=tile.persistent)
        # Pre-pass buffers: fp8 KV always; a 16-bit KV gathered from its pages in eager mode only (a
        # CUDA-graph plan would bound every later plan's KV by the workspace: it keeps the portable kernel).
        plan = self._plan
        prepass = kv_dtype in V.FP8_TYPES or (kv_copied(plan) and graph is None)
        if prepass and hopper_covers(plan, self._device, self._backend):
            self._plan = self._with_prepass(plan, prepass_len(int(kv_indptr_h[-1]) * max(page_size, 1), batch))
        if graph is not None:
            self._alibi = graph["alibi"]
        else:
            self._alibi = get_alibi_slopes(num_qo_heads).to(self._device) if mode == PosEncodingMode.ALIBI else None
        self._replay = self._replay_key = self._replay_cache = None

    def _partials(self, rows: int, num_qo_heads: int, head_dim_vo: int):
        """fp32 views of the float workspace for `rows` partial states: [rows, H, D_vo], [rows, H]."""
        need = rows * num_qo_heads * (head_dim_vo + 1) * 4
        have = self._workspace.numel() * self._workspace.element_size()
        if have < need:
            raise ValueError(f"float_workspace_buffer: this plan needs {need} bytes for split-KV partial states, "
                             f"the buffer has {have}; pass a larger one or disable_split_kv=True")
        ws = self._workspace.view(torch.uint8)[:need].view(torch.float32)
        return (ws[: rows * num_qo_heads * head_dim_vo].view(rows, num_qo_heads, head_dim_vo),
                ws[rows * num_qo_heads * head_dim_vo:].view(rows, num_qo_heads))

    def _with_prepass(self, plan: PrefillPlan, entries: int) -> PrefillPlan:
        """The plan with the buffer its Gluon launch writes first (kernels/kv_prepass.py), or as it
        is (the portable kernel then runs it) where that buffer does not fit. fp8 q/k/v: V^T
        [H_kv, D, entries], in the plan's own memory. 16-bit q over a KV read from a copy
        (launch.kv_copied): K and V in q's dtype, [entries, H_kv, D] each, in the float workspace
        after the partial states (that is what bounds them). In CUDA-graph mode both live in the
        workspace, sized by the first plan to all it has left (the captured launches keep their
        addresses and strides): a later plan that needs more raises."""
        h, d = plan.num_kv_heads, plan.head_dim_vo
        fp8_q = plan.q_dtype in V.FP8_TYPES
        per_entry = h * d * (1 if fp8_q else 2 * plan.q_dtype.itemsize)
        if self._graph is None:
            if fp8_q:
                v_t = torch.empty(h, d, entries, dtype=plan.kv_dtype, device=self._device)
                return dataclasses.replace(plan, v_t=v_t)
            scratch = self._scratch_after(plan.part_lse)
            if scratch.numel() < entries * per_entry:
                return plan
            return dataclasses.replace(plan, kv_copy=self._copy_buffers(scratch, entries, plan))
        g = self._graph
        if "prepass" not in g:
            scratch = self._scratch_after(g["partials"][1])
            fit = scratch.numel() // per_entry // 16 * 16
            g["prepass"] = None if fit == 0 else (scratch[: h * d * fit].view(plan.kv_dtype).view(h, d, fit) if fp8_q
                                                  else self._copy_buffers(scratch, fit, plan))
        buf = g["prepass"]
        if buf is None:  # nothing fits: every plan of this wrapper runs on the portable kernel
            return plan
        fit = buf.shape[2] if fp8_q else buf[0].shape[0]
        if entries > fit:
            raise ValueError(f"float_workspace_buffer: this plan's K/V pre-pass needs {entries * per_entry} bytes "
                             f"after the partial states, the CUDA-graph workspace holds {fit * per_entry}; pass a "
                             "larger buffer")
        return dataclasses.replace(plan, **({"v_t": buf} if fp8_q else {"kv_copy": buf}))

    def _scratch_after(self, part_lse: Optional[torch.Tensor]) -> torch.Tensor:
        """The float workspace's bytes after the partial states (all of it without them), 128-aligned."""
        ws = self._workspace.view(torch.uint8)
        if part_lse is None:
            return ws
        end = part_lse.data_ptr() + part_lse.numel() * part_lse.element_size() - ws.data_ptr()
        return ws[(end + 127) // 128 * 128:]

    @staticmethod
    def _copy_buffers(scratch: torch.Tensor, entries: int, plan: PrefillPlan) -> tuple:
        n = entries * plan.num_kv_heads * plan.head_dim_vo * plan.q_dtype.itemsize
        return tuple(scratch[i * n: (i + 1) * n].view(plan.q_dtype).view(entries, plan.num_kv_heads, plan.head_dim_vo)
                     for i in range(2))

    def _tile(self, rows, head_dim_qk, head_dim_vo, mode, dtypes, page_size, has_mask, keys, diagonal):
        return batch_prefill_tile(self._device, self._backend, *dtypes, head_dim_qk, head_dim_vo, page_size, rows,
                                  has_mask, mode == PosEncodingMode.ROPE_LLAMA, mode != PosEncodingMode.NONE, keys,
                                  diagonal)

    def _graph_plan(self, batch, total_qo, group, packed, num_qo_heads, head_dim_qk, head_dim_vo, mode, dtypes,
                    page_size, keys, diagonal):
        """CUDA-graph mode: what the first plan fixes for every later one (None in eager mode).
        The captured q holds the first plan's tokens: later plans may have any lengths with at
        most that many tokens in all. The grid bounds the row tiles, or the work of a split plan
        (which the planner keeps within two waves of programs); the partial states get the rows
        such a split may write, and the merge is always launched (it skips unsplit rows)."""
        if not self._use_cuda_graph:
            return None
        if batch != self._fixed_batch:
            raise ValueError(f"this CUDA-graph wrapper was built for batch size {self._fixed_batch}, got {batch}")
        if packed is not None:
            for name, buf, dtypes in (("custom_mask_buf", self._mask_buffers[0], (torch.uint8,)),
                                      ("mask_indptr_buf", self._mask_buffers[1], (torch.int32, torch.int64))):
                if buf is None:
                    raise ValueError(f"a custom mask in CUDA-graph mode needs {name} (a device tensor the plan "
                                     "writes into)")
                V.check_tensor(name, buf, 1)
                V.check_dtype(name, buf, dtypes)
            if self._mask_buffers[1].shape[0] < batch + 1:
                raise ValueError(f"mask_indptr_buf: expected at least {batch + 1} entries, got "
                                 f"{self._mask_buffers[1].shape[0]}")
        if self._graph is None:
            tile = self._tile(max(total_qo * group, 1), head_dim_qk, head_dim_vo, mode, dtypes, page_size,
                              packed is not None, keys, diagonal)
            split_work = triton.cdiv(2 * num_sms(self._device), num_qo_heads // group)
            max_work = max(triton.cdiv(total_qo * group, tile.block_m) + batch, split_work, 1)
            self._graph = dict(
                max_qo=total_qo, tile=tile, max_work=max_work, has_mask=packed is not None,
                partials=self._partials(split_work * triton.cdiv(tile.block_m, group), num_qo_heads, head_dim_vo),
                heads=(num_qo_heads, head_dim_qk, head_dim_vo, mode, dtypes),
                buffer=torch.empty(buffer_len(batch, max_work) + total_qo + 1, dtype=torch.int32, device=self._device),
                alibi=get_alibi_slopes(num_qo_heads).to(self._device) if mode == PosEncodingMode.ALIBI else None)
        g = self._graph
        if total_qo > g["max_qo"]:
            raise ValueError(f"this CUDA-graph wrapper's first plan had {g['max_qo']} query tokens (the captured q); "
                             f"got {total_qo}")
        if (num_qo_heads, head_dim_qk, head_dim_vo, mode, dtypes) != g["heads"] or \
                (packed is not None) != g["has_mask"]:
            raise ValueError("a CUDA-graph plan must keep the heads, head dims, pos_encoding_mode, q/kv dtypes and "
                             "whether there is a custom mask of the first")
        return g

    def _replayed(self, key, tensors: dict, return_lse: bool):
        """run()'s fast path: while the plan stands and the kinds of run()'s arguments repeat
        (`key`, see replay_key), the last launch is replayed on the new tensors, with no checks
        and no argument binding (these were checked when first seen). None on a miss."""
        if key is None or key != self._replay_key:
            return None
        plan = self._plan
        out, lse = tensors["o_ptr"], tensors["lse_ptr"]
        if out is None:
            out = tensors["o_ptr"] = empty_output(tensors["q_ptr"].shape[0], plan.num_qo_heads, plan.head_dim_vo,
                                                  dtype=plan.o_dtype, device=self._device)
        if return_lse and lse is None:
            lse = tensors["lse_ptr"] = empty_output(tensors["q_ptr"].shape[0], plan.num_qo_heads, dtype=torch.float32,
                                                    device=self._device)
        for replay, names in self._replay:
            replay(**{n: tensors[n] for n in names if n in tensors})
        return (out, lse) if return_lse else out

    def _run(self, q, k, v, kv_indices, strides, q_scale, k_scale, v_scale, out, lse, return_lse, window_left,
             sinks, key, cache=None):
        """The checked launch; arms the fast path for later calls of the same kind (`key`, and
        the same paged cache object when there is one)."""
        self._replay = self._replay_key = self._replay_cache = None
        plan = self._plan
        if plan is None:
            raise RuntimeError("run() before plan(): call plan() with the batch's indptrs first")
        if window_left is not None and window_left != plan.variant.window_left:
            raise ValueError(f"window_left={window_left} at run differs from {plan.variant.window_left} given to plan()")
        rows = self._graph["max_qo"] if self._graph is not None else plan.total_qo
        shape = (rows, plan.num_qo_heads, plan.head_dim_qk)
        V.check_tensor("q", q, 3)
        if tuple(q.shape) != shape:
            raise ValueError(f"q: expected shape {shape} (qo_indptr[-1], num_qo_heads, head_dim_qk) as planned, "
                             f"got {tuple(q.shape)}")
        if q.dtype != plan.q_dtype:
            raise ValueError(f"q: the plan fixed q_data_type={plan.q_dtype}, got {q.dtype}; pass q_data_type to plan()")
        if k.dtype != plan.kv_dtype or v.dtype != plan.kv_dtype:
            raise ValueError(f"k/v: the plan fixed kv_data_type={plan.kv_dtype}, got {k.dtype}/{v.dtype}")
        V.check_last_dim_contiguous("q", q)
        if q.device != self._device or k.device != self._device:
            raise ValueError(f"q and the KV must be on the workspace's device {self._device}, got {q.device}, {k.device}")
        sinks = V.check_sinks(sinks, plan.num_qo_heads, self._device)
        out, lse = run_outputs(out, lse, return_lse, (rows, plan.num_qo_heads, plan.head_dim_vo),
                               plan.o_dtype, self._device)
        sm_scale = plan.variant.sm_scale * (1.0 if q_scale is None else float(q_scale)) * \
            (1.0 if k_scale is None else float(k_scale))
        replays = prefill_launch(plan, q, k, v, kv_indices, strides, out, lse, self._alibi, sinks, sm_scale,
                                 1.0 if v_scale is None else float(v_scale), self._backend)
        if key is not None and replays and all(r is not None for r, _ in replays):
            self._replay, self._replay_key, self._replay_cache = replays, key, cache
        return (out, lse) if return_lse else out


class BatchPrefillWithRaggedKVCacheWrapper(_BatchPrefillWrapper):
    r"""Prefill attention for a batch whose K/V are ragged (contiguous per request).

    Example::

        w = BatchPrefillWithRaggedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        w.plan(qo_indptr, kv_indptr, 32, 8, 128, causal=True, q_data_type=torch.bfloat16)
        out = w.run(q, k, v)   # q [qo_indptr[-1], 32, 128], k/v [kv_indptr[-1], 8, 128]

    backend: "auto" (or "fa3") runs the plans it covers on the Gluon Hopper kernel on sm_90
    (launch.hopper_prefill: 16-bit or fp8 e4m3 q/k/v, or 16-bit q over an fp8 KV; head dim
    64/128, 256 with 16-bit q; mask/window/soft cap/sinks or not, no RoPE/ALiBi; for the paged
    wrapper, pages of 8-64 tokens, or of any size with 16-bit q through a copy; plans whose launch
    writes a buffer first hold it, see _with_prepass)
    and the rest on the portable kernel; "fa2" always takes the portable kernel; FlashInfer's
    other names are accepted and mean "auto".
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: Optional[torch.Tensor] = None, kv_indptr_buf: Optional[torch.Tensor] = None,
                 custom_mask_buf: Optional[torch.Tensor] = None, mask_indptr_buf: Optional[torch.Tensor] = None,
                 backend: str = "auto", jit_args: Optional[Any] = None, jit_kwargs: Optional[Any] = None) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend,
                         dict(qo_indptr_buf=qo_indptr_buf, kv_indptr_buf=kv_indptr_buf),
                         (custom_mask_buf, mask_indptr_buf))

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int, num_kv_heads: int,
             head_dim_qk: int, head_dim_vo: Optional[int] = None, custom_mask: Optional[torch.Tensor] = None,
             packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, window_left: int = -1, logits_soft_cap: Optional[float] = None,
             sm_scale: Optional[float] = None, rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Union[str, torch.dtype] = "float16", kv_data_type: Optional[Union[str, torch.dtype]] = None,
             o_data_type: Optional[Union[str, torch.dtype]] = None, non_blocking: bool = True,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, **unsupported: Any) -> None:
        """Plan for requests with qo_indptr [B+1] query offsets and kv_indptr [B+1] key offsets."""
        if unsupported:
            raise NotImplementedError(f"plan() arguments not supported yet: {sorted(unsupported)}")
        kv_h = host_indptr("kv_indptr", kv_indptr)
        if self._use_cuda_graph:
            self._graph_buffers["kv_indptr_buf"][: kv_h.numel()].copy_(kv_indptr, non_blocking=non_blocking)
        self._make_plan(qo_indptr, kv_h, (kv_h[1:] - kv_h[:-1]).to(torch.int32), 0, num_qo_heads, num_kv_heads,
                        head_dim_qk, head_dim_vo, custom_mask, packed_custom_mask, causal, pos_encoding_mode, sm_scale,
                        window_left, logits_soft_cap, rope_scale, rope_theta, q_data_type, kv_data_type, o_data_type,
                        non_blocking, fixed_split_size, disable_split_kv)

    begin_forward = plan

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, o_scale: Optional[float] = None,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            enable_pdl: Optional[bool] = None, sinks: Optional[torch.Tensor] = None,
            kv_cache_sf=None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """q [qo_indptr[-1], H_qo, D_qk]; k [kv_indptr[-1], H_kv, D_qk] and v [.., D_vo] (NHD; HND
        swaps the first two axes). Returns out [qo_indptr[-1], H_qo, D_vo] (and the base-2 lse).
        sinks [H_qo]: attention-sink logits (natural log, not scaled by sm_scale) that join each
        row's softmax denominator; the lse then includes them."""
        key = replay_key(q, k, v, out, lse if return_lse else None, return_lse, q_scale, k_scale, v_scale, sinks) \
            if not (args or o_scale is not None or kv_cache_sf is not None) else None
        done = self._replayed(key, dict(q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=out, lse_ptr=lse, sinks_ptr=sinks),
                              return_lse)
        if done is not None:
            return done
        if args or o_scale is not None or kv_cache_sf is not None:
            raise NotImplementedError("extra positional arguments, o_scale and kv_cache_sf are not supported")
        V.check_tensor("k", k, 3)
        V.check_tensor("v", v, 3)
        if self._layout == "HND":
            k, v = k.transpose(0, 1), v.transpose(0, 1)
        plan = self._plan
        if plan is not None and (k.shape[0] < plan.total_kv or k.shape[1] != plan.num_kv_heads
                                 or v.shape[:2] != k.shape[:2] or k.shape[2] != plan.head_dim_qk
                                 or v.shape[2] != plan.head_dim_vo):
            raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} (as NHD): expected [>= {plan.total_kv}, "
                             f"{plan.num_kv_heads}, {plan.head_dim_qk}/{plan.head_dim_vo}] as planned")
        V.check_last_dim_contiguous("k", k)
        V.check_last_dim_contiguous("v", v)
        strides = (0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1))
        return self._run(q, k, v, None, strides, q_scale, k_scale, v_scale, out, lse, return_lse, None, sinks, key)

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, k, v, *args, **kwargs):
        """Deprecated alias of run()."""
        return self.run(q, k, v, *args, **kwargs)


class BatchPrefillWithPagedKVCacheWrapper(_BatchPrefillWrapper):
    r"""Prefill attention for a batch whose K/V live in a paged cache (see :mod:`pyflashinfer.page`).

    Example::

        w = BatchPrefillWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        w.plan(qo_indptr, kv_indptr, kv_indices, kv_last_page_len, 32, 8, 128, 16, causal=True,
               q_data_type=torch.bfloat16)
        out = w.run(q, (k_cache, v_cache))
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: Optional[torch.Tensor] = None, paged_kv_indptr_buf: Optional[torch.Tensor] = None,
                 paged_kv_indices_buf: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buf: Optional[torch.Tensor] = None,
                 custom_mask_buf: Optional[torch.Tensor] = None, mask_indptr_buf: Optional[torch.Tensor] = None,
                 backend: str = "auto", jit_args: Optional[Any] = None, jit_kwargs: Optional[Any] = None) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend,
                         dict(qo_indptr_buf=qo_indptr_buf, paged_kv_indptr_buf=paged_kv_indptr_buf,
                              paged_kv_indices_buf=paged_kv_indices_buf,
                              paged_kv_last_page_len_buf=paged_kv_last_page_len_buf),
                         (custom_mask_buf, mask_indptr_buf))

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, head_dim_vo: Optional[int] = None, custom_mask: Optional[torch.Tensor] = None,
             packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None, window_left: int = -1,
             logits_soft_cap: Optional[float] = None, rope_scale: Optional[float] = None,
             rope_theta: Optional[float] = None, q_data_type: Union[str, torch.dtype] = "float16",
             kv_data_type: Optional[Union[str, torch.dtype]] = None,
             o_data_type: Optional[Union[str, torch.dtype]] = None, non_blocking: bool = True,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, **unsupported: Any) -> None:
        """Plan for requests with qo_indptr [B+1] and the page table (indptr [B+1], indices,
        last_page_len [B] in 1..page_size, 0 for a request without pages)."""
        if unsupported:
            raise NotImplementedError(f"plan() arguments not supported yet: {sorted(unsupported)}")
        indptr_h, seq = host_page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, page_size,
                                        ("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len"))
        if paged_kv_indices.device != self._device:
            raise ValueError(f"paged_kv_indices: expected a tensor on {self._device}, got {paged_kv_indices.device}")
        self._kv_indices = paged_kv_indices
        if self._use_cuda_graph:  # the captured launch reads the page ids from the caller's buffer
            bufs, n_idx = self._graph_buffers, int(indptr_h[-1])
            if bufs["paged_kv_indices_buf"].shape[0] < n_idx:
                raise ValueError(f"paged_kv_indices_buf holds {bufs['paged_kv_indices_buf'].shape[0]} page ids, "
                                 f"the plan needs {n_idx}")
            bufs["paged_kv_indptr_buf"][: indptr_h.numel()].copy_(paged_kv_indptr, non_blocking=non_blocking)
            bufs["paged_kv_last_page_len_buf"][: seq.numel()].copy_(paged_kv_last_page_len, non_blocking=non_blocking)
            bufs["paged_kv_indices_buf"][:n_idx].copy_(paged_kv_indices[:n_idx], non_blocking=non_blocking)
            self._kv_indices = bufs["paged_kv_indices_buf"]
        self._make_plan(qo_indptr, indptr_h, seq, page_size, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo,
                        custom_mask, packed_custom_mask, causal, pos_encoding_mode, sm_scale, window_left,
                        logits_soft_cap, rope_scale, rope_theta, q_data_type, kv_data_type, o_data_type, non_blocking,
                        fixed_split_size, disable_split_kv)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache: PagedKVCache, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None, kv_cache_sf=None,
            **unsupported: Any) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """q [qo_indptr[-1], H_qo, D]; returns out [qo_indptr[-1], H_qo, D] (and the base-2 lse).
        sinks [H_qo]: attention-sink logits, as in the ragged wrapper's run()."""
        key = replay_key(q, out, lse if return_lse else None, return_lse, q_scale, k_scale, v_scale, window_left,
                         sinks) if not (args or kv_cache_sf is not None or unsupported) else None
        if same_cache(paged_kv_cache, self._replay_cache):
            done = self._replayed(key, dict(q_ptr=q, o_ptr=out, lse_ptr=lse, sinks_ptr=sinks), return_lse)
            if done is not None:
                return done
        if args or kv_cache_sf is not None or unsupported:
            raise NotImplementedError("extra positional arguments, kv_cache_sf and "
                                      f"{sorted(unsupported)} are not supported")
        plan = self._plan
        cache = unpack_paged_kv_cache(paged_kv_cache, self._layout)
        if plan is not None and (cache.page_size, cache.num_kv_heads, cache.head_dim) != \
                (plan.page_size, plan.num_kv_heads, plan.head_dim_qk):
            raise ValueError(f"paged_kv_cache: expected page_size {plan.page_size}, {plan.num_kv_heads} kv heads, "
                             f"head_dim {plan.head_dim_qk} as planned, got {cache.page_size}, {cache.num_kv_heads}, "
                             f"{cache.head_dim}")
        strides = (cache.stride_page, cache.stride_tok, cache.stride_head,
                   cache.v_stride_page, cache.v_stride_tok, cache.v_stride_head)
        return self._run(q, cache.k, cache.v, self._kv_indices, strides, q_scale, k_scale, v_scale, out, lse,
                         return_lse, window_left, sinks, key, cache_ref(paged_kv_cache))

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, paged_kv_cache, *args, **kwargs):
        """Deprecated alias of run()."""
        return self.run(q, paged_kv_cache, *args, **kwargs)
