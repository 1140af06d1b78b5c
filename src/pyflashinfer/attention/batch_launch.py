"""Launch of a batch plan: one attention launch over the work list (decode merges its split
requests in that launch), then for prefill one merge launch.

Registered as the `torch.library` custom op ``pyflashinfer::paged_decode`` (with a fake
implementation) so that `torch.compile` can trace a wrapper's `run`; eager calls skip the
dispatcher, whose overhead decode at batch 1 cannot afford, and return `Replay`s of their
launches that the wrapper reuses while nothing but q/out/lse changes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .._launch import launch, launcher_op
from ..utils import num_sms
from .kernels.common import LOG2E
from .kernels.decode import decode_fwd_kernel
from .kernels.prefill import attention_fwd_kernel
from .kernels.prefill_hopper import prefill_ws_kernel
from .launch import _pow2, copy_kv, fp8_qk, hopper_prefill, kv_desc_view, kv_tma, merge_states_into, write_vt
from .plan import section

# The Gluon kernel's KV tile by head dim: 128 led 64 on every prefill workload of PERFORMANCE.md
# (H100, 2026-11-23: 499 / 588 TFLOP/s at llama3-8b L4096 / L16384 against 441 / 513 with 64);
# d256 takes 64, its two K/V slots of 64 x 256 fitting shared memory beside the Q rows;
# the consumer warpgroup's registers: the default partition keeps 256, so 232 + 24 for the
# producer fill the 512 per thread of the three warpgroups.
HOPPER_BLOCK_N = {64: 128, 128: 128, 256: 64}
HOPPER_CONSUMER_REGS = 232
# K/V ring slots by element size: three 16-bit slots do not fit at d128 (245,888 B of shared
# memory); three fp8 slots fit but measured no faster (H200, 2026-12-04: L16384 664.8 -> 654.8
# TFLOP/s ragged, benchmarks/RESULTS.md).
HOPPER_STAGES = {2: 2, 1: 2}


def _paged_decode_launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: torch.Tensor, plan_buf: torch.Tensor,
    part_o: torch.Tensor, part_lse: torch.Tensor, counters: torch.Tensor, out: torch.Tensor,
    lse: Optional[torch.Tensor], alibi: Optional[torch.Tensor], batch: int, max_work: int, hnd: bool,
    use_tensor_cores: bool, block_n: int, num_warps: int, num_stages: int, maxnreg: int, sm_scale: float,
    soft_cap: float, window_left: int, rope_rcp_scale: float, rope_log2_theta: float, v_scale: float, use_rope: bool,
    use_alibi: bool, q_len_per_req: int, block_m: int, sinks: Optional[torch.Tensor], two_phase: bool,
    has_partials: bool,
) -> list:
    """has_partials: the plan may split KV (it does, or a CUDA graph may replay a later plan that does);
    a plan that never splits launches the tensor-core kernel without the partial-state and merge code."""
    num_qo_heads, d_qk = q.shape[1], q.shape[2]
    tok, head = (2, 1) if hnd else (1, 2)
    num_kv_heads, page_size, d_vo = k.shape[head], k.shape[tok], v.shape[-1]
    group = num_qo_heads // num_kv_heads
    sec = [plan_buf[section(batch, max_work, i)[0]:] for i in range(4)]  # seq_lens, merge, kv, qo indptr
    common = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=out, lse_ptr=lse, alibi_ptr=alibi, sinks_ptr=sinks, HAS_SINKS=sinks is not None,
        work_ptr=plan_buf,
        seq_lens_ptr=sec[0], kv_indptr_ptr=sec[2], kv_indices_ptr=kv_indices,
        part_o_ptr=part_o, part_lse_ptr=part_lse, merge_indptr_ptr=sec[1], counter_ptr=counters,
        stride_qn=q.stride(0), stride_qh=q.stride(1), stride_kpage=k.stride(0), stride_kn=k.stride(tok),
        stride_kh=k.stride(head), stride_vpage=v.stride(0), stride_vn=v.stride(tok), stride_vh=v.stride(head),
        stride_os=0, stride_on=out.stride(0), stride_oh=out.stride(1), stride_ls=0,
        stride_ln=lse.stride(0) if lse is not None else 0, stride_lh=lse.stride(1) if lse is not None else 0,
        stride_w=max_work, stride_pn=part_o.stride(0), stride_ph=part_o.stride(1),
        stride_pln=part_lse.stride(0), stride_plh=part_lse.stride(1),
        kv_len=0, group_size=group, kv_chunk=0,
        sm_scale=sm_scale, soft_cap=soft_cap or 1.0, window_left=window_left, rope_rcp_scale=rope_rcp_scale,
        rope_log2_theta=rope_log2_theta, v_scale=v_scale,
        HEAD_DIM_QK=d_qk, HEAD_DIM_VO=d_vo, BLOCK_DQK=_pow2(d_qk), BLOCK_DVO=_pow2(d_vo), BLOCK_N=block_n,
        HAS_WINDOW=window_left >= 0, HAS_SOFTCAP=soft_cap > 0, HAS_ALIBI=use_alibi, USE_ROPE=use_rope,
        WRITE_LSE=lse is not None, BATCHED=True, PAGED=True, PAGE_SIZE=page_size,
    )
    grid = (max_work, num_kv_heads, 1)
    if use_tensor_cores:
        # HEADS_ADJACENT: a work item's KV heads run as consecutive programs, which read the same
        # pages at once (H100, 2026-12-06, per CUDA-graph replay:
        # bf16 gqa4 bs64 kv4096 / gqa4 bs256 kv2048 / mha bs64 kv4096 2,937 -> 2,973 / 2,981 -> 3,024 /
        # 2,986 -> 3,068 GB/s; fp8 on its 64 x 4 x 3 tile 2,705 -> 2,780 / 2,762 -> 2,806 at gqa4 bs64 / bs256).
        attn = launch(attention_fwd_kernel, grid, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg or None,
                      mask_ptr=None, mask_indptr_ptr=None, qo_indptr_ptr=sec[3], qo_len=1, BLOCK_M=block_m,
                      IS_CAUSAL=q_len_per_req > 1, HAS_MASK=False, DOT_F16=k.element_size() == 1,
                      HAS_PARTIALS=has_partials, KV_TMA=False, WARP_SPEC=False, TWO_PHASE=two_phase,
                      part_indptr_ptr=None, PARTIALS_BY_TOKEN=False, scale_q_ptr=None, scale_k_ptr=None,
                      scale_v_ptr=None, HEAD_SCALES=False, FP8_QK=False, HEADS_ADJACENT=True,
                      **common)
    else:
        attn = launch(decode_fwd_kernel, grid, num_warps=num_warps, num_stages=num_stages,
               BLOCK_G=triton.next_power_of_2(group), **common)
    return [(attn, ("q_ptr", "o_ptr", "lse_ptr", "sinks_ptr"))]


# Launch; returns [(Replay or None, pointer names it takes q/out/lse/sinks as)] in eager mode.
paged_decode = launcher_op("paged_decode", _paged_decode_launch, ("part_o", "part_lse", "counters", "out", "lse"))


_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16, torch.float8_e4m3fn: gl.float8e4nv}


def _kv_desc(t: torch.Tensor, strides: tuple, page_size: int, heads: int, block_n: int):
    """The Gluon kernel's host-side tensor descriptor of K or V (launch.kv_desc_view), one copy
    a page (page_size > 0) or a KV tile, and its view-position arguments (name prefix "k_" or
    "v_" added by the caller); then a function that builds the same descriptor over another
    tensor of the same shape and strides (a replay's)."""
    view = kv_desc_view(t, strides, page_size, heads)
    d = t.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for([block_n, d], _GL_DTYPES[t.dtype])

    def build(x: torch.Tensor) -> TensorDescriptor:
        return TensorDescriptor(x, [view.rows, view.width], [view.row_stride, 1], [page_size or block_n, d], layout)

    return build(t), dict(page_rows=view.page_rows, head_row=view.head_row, head_col=view.head_col), build


class _DescReplay:
    """A Replay of the Gluon kernel, whose K/V arrive as tensor descriptors: the k/v tensors a
    run passes (by their pointer names) become descriptors first. A replay's tensors match the
    first run's shape and strides, so a descriptor depends on the data pointer alone: the last
    one built per argument is kept, and a run over the same K/V (a serving engine's one cache)
    builds none."""

    __slots__ = ("replay", "builders", "built")

    def __init__(self, replay, builders: dict):  # pointer name -> (descriptor argument, build)
        self.replay, self.builders = replay, builders
        self.built = {}  # descriptor argument -> (data pointer, descriptor)

    def __call__(self, **tensors) -> None:
        for name, (arg, build) in self.builders.items():
            if name in tensors:
                t = tensors.pop(name)
                kept = self.built.get(arg)
                if kept is None or kept[0] != t.data_ptr():
                    kept = self.built[arg] = (t.data_ptr(), build(t))
                tensors[arg] = kept[1]
        self.replay(**tensors)


# The portable kernel's K/V arguments, which the Gluon kernel takes as tensor descriptors.
_PTR_KV_ARGS = ("k_ptr", "v_ptr", "kv_indices_ptr", "stride_kpage", "stride_kn", "stride_kh", "stride_vpage",
                "stride_vn", "stride_vh")


def prefill_launch(plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: Optional[torch.Tensor],
                   strides: tuple, out: torch.Tensor, lse: Optional[torch.Tensor], alibi: Optional[torch.Tensor],
                   sinks: Optional[torch.Tensor], sm_scale: float, v_scale: float, backend: str = "auto") -> list:
    """The launches of a PrefillPlan: attention over its work list, then the merge of split
    requests' partial states. strides: (k page, k token, k head, v page, v token, v head) in
    elements (page strides unused for a ragged KV). Returns [(Replay or None, the pointer
    arguments it takes from run())] (empty when there is no work). On sm_90 the plans that the
    Gluon kernel covers (see launch.hopper_prefill) run on it unless backend="fa2"."""
    if plan.num_work == 0:
        return []
    var = plan.variant
    sec = [plan.buffer[section(plan.batch_size, plan.num_work, i)[0]:] for i in range(4)]
    kp, kn, kh, vp, vn, vh = strides
    split = plan.part_o is not None  # a split plan, or any CUDA-graph plan (which may split later)
    part_o, part_lse = plan.part_o, plan.part_lse
    # What both kernels take: the tensors, the plan's work list, strides, flags.
    common = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=out, lse_ptr=lse, work_ptr=plan.buffer, qo_indptr_ptr=sec[3],
        seq_lens_ptr=sec[0], kv_indptr_ptr=sec[2], kv_indices_ptr=kv_indices, part_o_ptr=part_o,
        part_lse_ptr=part_lse, part_indptr_ptr=plan.part_indptr if split else None,
        stride_qn=q.stride(0), stride_qh=q.stride(1), stride_kpage=kp, stride_kn=kn, stride_kh=kh, stride_vpage=vp,
        stride_vn=vn, stride_vh=vh, stride_on=out.stride(0), stride_oh=out.stride(1),
        stride_ln=lse.stride(0) if lse is not None else 0, stride_lh=lse.stride(1) if lse is not None else 0,
        stride_w=plan.num_work, stride_pn=part_o.stride(0) if split else 0, stride_ph=part_o.stride(1) if split else 0,
        stride_pln=part_lse.stride(0) if split else 0, stride_plh=part_lse.stride(1) if split else 0,
        group_size=plan.num_qo_heads // plan.num_kv_heads, BLOCK_M=plan.block_m,
        IS_CAUSAL=var.causal and plan.packed_mask is None, WRITE_LSE=lse is not None, HAS_PARTIALS=split,
    )
    grid = (plan.num_work, plan.num_kv_heads, 1)
    replays = []
    if hopper_prefill(plan, q, k, v, strides, backend):
        vt = plan.v_t  # held by fp8-q plans only
        names = ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr")
        page_size, copy_page, kv_strides = plan.page_size, -1, strides
        if vt is not None:  # fp8: P V reads V^T, written here from this run's V
            replays.append((write_vt(vt, v, sec[0], sec[2], kv_indices, (vp, vn, vh), plan.page_size,
                                     plan.batch_size, plan.max_kv_len), ("v_ptr",)))
            names = ("q_ptr", "k_ptr", "o_ptr", "lse_ptr")
        elif plan.kv_copy is not None:  # an fp8 KV or small pages: the kernel reads a ragged copy
            kc, vc = plan.kv_copy
            replays.append((copy_kv(kc, vc, k, v, sec[0], sec[2], kv_indices, strides, plan.page_size,
                                    plan.batch_size, plan.max_kv_len, sec[3], var.window_left, plan.block_n),
                            ("k_ptr", "v_ptr")))
            page_size, copy_page, names = 0, plan.page_size, ("q_ptr", "o_ptr", "lse_ptr")
            k, v, kv_indices = kc, vc, None
            kv_strides = (0, kc.stride(0), kc.stride(1), 0, vc.stride(0), vc.stride(1))
        short = plan.maxnreg is not None  # launch.SHORT_TILE: two programs an SM
        block_n = plan.block_n if short else HOPPER_BLOCK_N[plan.head_dim_qk]
        descs, builders = {}, {}
        for x, which in ((k, "k"), (v, "v")) if vt is None else ((k, "k"),):
            at = 0 if which == "k" else 3
            desc, pos, build = _kv_desc(x, kv_strides[at:at + 3], page_size, plan.num_kv_heads, block_n)
            descs.update({f"{which}_desc": desc, **{f"{which}_{n}": p for n, p in pos.items()}})
            builders[f"{which}_ptr"] = (f"{which}_desc", build)
        if vt is not None:
            descs.update(v_desc=None, v_page_rows=0, v_head_row=0, v_head_col=0)
        cap = var.soft_cap  # logits cap tanh(q.k sm_scale / cap): the kernel's exp2 scale is then cap log2(e)
        launch_args = {n: a for n, a in common.items() if n not in _PTR_KV_ARGS}
        # Units outnumbering the programs that fit at once (two an SM on the short tile) run on that many
        # persistent programs (plan.persistent), which copy the next unit's Q rows in 16-byte pieces
        # (cp.async) during this one's.
        resident = (2 if short else 1) * num_sms(q.device)
        q_16b = q.data_ptr() % 16 == 0 and q.stride(0) % 8 == 0 and q.stride(1) % 8 == 0
        persistent = plan.persistent and vt is None and q_16b and plan.num_work * plan.num_kv_heads > resident
        if persistent:
            grid = (resident, 1, 1)
        attn = launch(prefill_ws_kernel, grid, num_warps=4, maxnreg=plan.maxnreg,
                      vt_ptr=vt, sinks_ptr=sinks, stride_vth=vt.stride(0) if vt is not None else 0,
                      stride_vtd=vt.stride(1) if vt is not None else 0, qk_scale=(cap or sm_scale) * LOG2E.value,
                      v_scale=v_scale, window_left=var.window_left, softcap_in=sm_scale / cap if cap else 1.0,
                      HEAD_DIM=plan.head_dim_qk, BLOCK_N=block_n,
                      STAGES=HOPPER_STAGES[q.element_size()], CONSUMER_REGS=HOPPER_CONSUMER_REGS,
                      PAGE_SIZE=page_size, COPY_PAGE=copy_page,
                      HAS_WINDOW=var.window_left >= 0, HAS_SOFTCAP=cap > 0, HAS_SINKS=sinks is not None,
                      mask_ptr=plan.packed_mask, mask_indptr_ptr=plan.mask_indptr,
                      HAS_MASK=plan.packed_mask is not None, PERSISTENT=persistent, num_heads=plan.num_kv_heads,
                      kv_indices_ptr=kv_indices, **descs, **launch_args)
        if attn is not None:
            attn = _DescReplay(attn, {n: b for n, b in builders.items() if n in names})
        names += ("sinks_ptr",)
    else:
        use_tma = kv_tma(k, v, (kn, kh, vn, vh), paged=plan.page_size > 0, use_rope=var.use_rope)
        attn = launch(
            attention_fwd_kernel, grid, num_warps=plan.num_warps, num_stages=plan.num_stages,
            mask_ptr=plan.packed_mask, mask_indptr_ptr=plan.mask_indptr, alibi_ptr=alibi, sinks_ptr=sinks,
            merge_indptr_ptr=None, counter_ptr=None, stride_os=0, stride_ls=0, qo_len=0, kv_len=0, kv_chunk=0,
            HEAD_DIM_QK=plan.head_dim_qk, HEAD_DIM_VO=plan.head_dim_vo, BLOCK_DQK=_pow2(plan.head_dim_qk),
            BLOCK_DVO=_pow2(plan.head_dim_vo), BLOCK_N=plan.block_n, HAS_MASK=plan.packed_mask is not None,
            BATCHED=True, PAGED=plan.page_size > 0, PAGE_SIZE=max(plan.page_size, 1),
            DOT_F16=k.element_size() == 1, HAS_SINKS=sinks is not None,
            KV_TMA=use_tma, WARP_SPEC=use_tma and plan.warp_spec, TWO_PHASE=True, PARTIALS_BY_TOKEN=True,
            scale_q_ptr=None, scale_k_ptr=None, scale_v_ptr=None, HEAD_SCALES=False, FP8_QK=fp8_qk(q, k),
            HEADS_ADJACENT=False,
            **dataclasses.replace(var, sm_scale=sm_scale, v_scale=v_scale).kernel_args(), **common,
        )
        names = ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr", "sinks_ptr")
    replays.append((attn, names))
    if split:
        merge = merge_states_into(part_o, part_lse, out, lse, indptr=plan.part_indptr, sinks=sinks)
        replays.append((merge, ("o_ptr", "lse_ptr", "sinks_ptr")))
    return replays
