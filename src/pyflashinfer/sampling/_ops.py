"""Launchers of the sampling kernels, registered as `torch.library` custom ops (with fake
implementations) so that `torch.compile` can trace the public functions. Eager calls skip the
dispatcher. Outputs are allocated by the callers and written in place."""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .._launch import Replay, cdiv, launch, launcher_op
from ._common import MAX_RENORM_ROUNDS, MAX_SAMPLING_ROUNDS, TOPK_CHUNK, row_tile, topk_slots
from .kernels.renorm import top_p_renorm_kernel
from .kernels.sample import sampling_kernel, topk_sampling_kernel
from .kernels.softmax import softmax_kernel
from .kernels.speculative import chain_speculative_kernel
from .kernels.topk import topk_filter_kernel, topk_filter_small_kernel, topk_threshold_kernel


def _launch_rows(kernel, num_rows: int, width: int, /, *, radix: bool = False, lanes: bool = False,
                 **kwargs) -> Optional[Replay]:
    """Launch a row kernel over num_rows rows of `width` values (nothing for no rows): the
    tile (rows per program, vocabulary block, warps) from row_tile; radix kernels also take
    its RADIX_BITS, kernels that draw by lanes (lane_draw) the TILES of one lane. Returns the
    launch's Replay (None on CPU or for no rows)."""
    if num_rows == 0:
        return None
    tile = row_tile(num_rows, width)
    if radix:
        kwargs["RADIX_BITS"] = tile.radix_bits
    if lanes:
        kwargs["TILES"] = triton.next_power_of_2(cdiv(width, tile.block))
    return launch(kernel, (cdiv(num_rows, tile.rows),), num_warps=tile.num_warps, num_stages=tile.num_stages,
           ROWS=tile.rows, BLOCK=tile.block, **kwargs)


def _sample_impl(x: torch.Tensor, samples: torch.Tensor, valid: torch.Tensor, indices: Optional[torch.Tensor],
                 thr: Optional[torch.Tensor], done: Optional[torch.Tensor], slots: Optional[torch.Tensor],
                 count: Optional[torch.Tensor], top_k_t: Optional[torch.Tensor], top_p_t: Optional[torch.Tensor],
                 min_p_t: Optional[torch.Tensor], seed_t: Optional[torch.Tensor], offset_t: Optional[torch.Tensor],
                 top_k: int, top_p: float, min_p: float, seed: int, offset: int, seed_stride: int,
                 offset_stride: int, is_logits: bool, top_k_mode: int, has_top_p: bool,
                 has_min_p: bool) -> Optional[list]:
    """The sampling launches: in top_k_first mode, first the small-k path (with `done`, which
    finishes the rows it can; kernels/sample.py topk_sampling_kernel) and the radix select of
    the rest into thr [batch] int32; then the rejection sampler (of the rows left). Returns the
    launches' Replays (None on CPU or for no rows)."""
    batch, vocab = samples.shape[0], x.shape[1]
    common = dict(x_ptr=x, indices_ptr=indices, top_k_ptr=top_k_t, stride_x=x.stride(0), batch=batch, vocab=vocab,
                  top_k=top_k, IS_LOGITS=is_logits, HAS_INDICES=indices is not None,
                  TOP_K_PER_ROW=top_k_t is not None)
    seeds = dict(seed_ptr=seed_t, offset_ptr=offset_t, seed=seed, offset=offset, seed_stride=seed_stride,
                 offset_stride=offset_stride, SEED_IN_TENSOR=seed_t is not None, OFFSET_IN_TENSOR=offset_t is not None)
    replays = []
    if done is not None:
        replays.append(_launch_rows(
            topk_sampling_kernel, batch, vocab, radix=True, **common, **seeds, out_ptr=samples, valid_ptr=valid,
            done_ptr=done, slots_ptr=slots, count_ptr=count, top_p_ptr=top_p_t, top_p=top_p, HAS_TOP_P=has_top_p,
            TOP_P_PER_ROW=top_p_t is not None, SLOTS=slots.shape[1], CHUNK=TOPK_CHUNK))
    if top_k_mode == 1:
        replays.append(_launch_rows(topk_threshold_kernel, batch, vocab, radix=True, **common, thr_ptr=thr,
                                    done_ptr=done, HAS_DONE=done is not None))
    replays.append(_launch_rows(
        sampling_kernel, batch, vocab, lanes=True, **common, **seeds,
        out_ptr=samples, valid_ptr=valid, top_p_ptr=top_p_t, min_p_ptr=min_p_t, thr_ptr=thr, done_ptr=done,
        top_p=top_p, min_p=min_p, HAS_DONE=done is not None, TOP_K_MODE=top_k_mode, HAS_TOP_P=has_top_p,
        HAS_MIN_P=has_min_p, TOP_P_PER_ROW=top_p_t is not None, MIN_P_PER_ROW=min_p_t is not None,
        MAX_ROUNDS=MAX_SAMPLING_ROUNDS))
    return None if any(r is None for r in replays) else replays


def _softmax_impl(x: torch.Tensor, out: torch.Tensor, temp_t: Optional[torch.Tensor], temperature: float) -> None:
    batch, vocab = x.shape
    _launch_rows(softmax_kernel, batch, vocab, x_ptr=x, out_ptr=out, temp_ptr=temp_t, stride_x=x.stride(0),
                 stride_out=out.stride(0), batch=batch, vocab=vocab, temperature=temperature,
                 HAS_TEMP_TENSOR=temp_t is not None)


def _topk_filter_impl(x: torch.Tensor, out: torch.Tensor, top_k_t: Optional[torch.Tensor], top_k: int,
                      renorm: bool) -> None:
    """The small-k path (for a scalar top_k only where it can take it), then the radix select
    for the rows it left."""
    batch, vocab = x.shape
    args = dict(x_ptr=x, out_ptr=out, top_k_ptr=top_k_t, stride_x=x.stride(0), stride_out=out.stride(0), batch=batch,
                vocab=vocab, top_k=top_k, TOP_K_PER_ROW=top_k_t is not None, RENORM=renorm)
    slots = topk_slots(batch, vocab, None if top_k_t is not None else top_k) if batch else 0
    done = torch.empty(batch, dtype=torch.int32, device=x.device) if slots else None
    if slots:
        _launch_rows(topk_filter_small_kernel, batch, vocab, radix=True, **args, done_ptr=done,
                     slots_ptr=torch.empty(batch, slots, dtype=torch.uint64, device=x.device),
                     count_ptr=torch.empty(batch, dtype=torch.int32, device=x.device), SLOTS=slots, CHUNK=TOPK_CHUNK)
    _launch_rows(topk_filter_kernel, batch, vocab, radix=True, **args, done_ptr=done, HAS_DONE=done is not None)


def _top_p_renorm_impl(x: torch.Tensor, out: torch.Tensor, top_p_t: Optional[torch.Tensor], top_p: float) -> None:
    batch, vocab = x.shape
    _launch_rows(top_p_renorm_kernel, batch, vocab, lanes=True, x_ptr=x, out_ptr=out, top_p_ptr=top_p_t, stride_x=x.stride(0),
                 stride_out=out.stride(0), batch=batch, vocab=vocab, top_p=top_p,
                 TOP_P_PER_ROW=top_p_t is not None, MAX_ROUNDS=MAX_RENORM_ROUNDS)


def _speculative_impl(draft: torch.Tensor, ids: torch.Tensor, target: torch.Tensor, out: torch.Tensor,
                      accepted: torch.Tensor, emitted: torch.Tensor, seed_t: Optional[torch.Tensor],
                      offset_t: Optional[torch.Tensor], seed: int, offset: int, seed_stride: int,
                      offset_stride: int) -> None:
    batch, n, vocab = draft.shape
    _launch_rows(chain_speculative_kernel, batch, vocab, draft_ptr=draft, ids_ptr=ids, target_ptr=target,
                 out_ptr=out, accepted_ptr=accepted, emitted_ptr=emitted, seed_ptr=seed_t, offset_ptr=offset_t,
                 batch=batch, num_spec=n, vocab=vocab, stride_db=draft.stride(0), stride_dn=draft.stride(1),
                 stride_ib=ids.stride(0), stride_tb=target.stride(0), stride_tn=target.stride(1),
                 stride_ob=out.stride(0), seed=seed, offset=offset, seed_stride=seed_stride,
                 offset_stride=offset_stride, SEED_IN_TENSOR=seed_t is not None,
                 OFFSET_IN_TENSOR=offset_t is not None)


sample_launch = launcher_op("sampling_sample", _sample_impl, ("samples", "valid", "thr", "done", "slots", "count"))
softmax_launch = launcher_op("sampling_softmax", _softmax_impl, ("out",))
topk_filter_launch = launcher_op("sampling_topk_filter", _topk_filter_impl, ("out",))
top_p_renorm_launch = launcher_op("sampling_top_p_renorm", _top_p_renorm_impl, ("out",))
speculative_launch = launcher_op("sampling_chain_speculative", _speculative_impl, ("out", "accepted", "emitted"))
