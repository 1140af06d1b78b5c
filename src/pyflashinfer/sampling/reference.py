"""Plain PyTorch references of the sampling family, in float64: the target distributions that
the samplers must draw from, and the outputs of softmax / renorm / mask. Used by the tests and
the benchmarks; slow (sorts) and meant to be obviously right.

Filter definitions (ties are kept, as the kernels and FlashInfer's rejection samplers do):
  top-k   token t is kept when fewer than k tokens have a larger value
  top-p   token t is kept when the mass of the tokens with a larger probability is
          < top_p x (row mass); top_p >= 1 keeps every token
  min-p   token t is kept when p_t >= min_p x max(p)
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

Param = Union[float, int, torch.Tensor]


def _per_row(value: Param, rows: int, dtype=torch.float64) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", dtype).reshape(rows, 1)
    return torch.full((rows, 1), float(value), dtype=dtype)


def softmax(logits: torch.Tensor, temperature: Optional[Param] = None) -> torch.Tensor:
    """softmax(logits / temperature) in float64 (float32 inputs are exact in float64)."""
    x = logits.detach().to("cpu", torch.float64)
    if temperature is not None:
        x = x / _per_row(temperature, x.shape[0])
    return torch.softmax(x, dim=-1)


def count_above(values: torch.Tensor) -> torch.Tensor:
    """For each entry, the number of entries of its row with a strictly larger value."""
    v = values.detach().to("cpu", torch.float64)
    srt, _ = torch.sort(v, dim=-1)
    return v.shape[-1] - torch.searchsorted(srt, v, right=True)


def mass_above(probs: torch.Tensor) -> torch.Tensor:
    """For each entry, the total probability of the entries of its row that are strictly larger."""
    p = probs.detach().to("cpu", torch.float64)
    srt, _ = torch.sort(p, dim=-1)
    suffix = torch.flip(torch.cumsum(torch.flip(srt, [-1]), -1), [-1])  # suffix[j] = sum(srt[j:])
    suffix = torch.cat([suffix, torch.zeros_like(suffix[:, :1])], dim=-1)
    return torch.gather(suffix, -1, torch.searchsorted(srt, p, right=True))


def top_k_mask(values: torch.Tensor, top_k: Param) -> torch.Tensor:
    """Kept entries of top-k (on probabilities or logits). k <= 0 or k >= vocab keeps all."""
    k = _per_row(top_k, values.shape[0], torch.int64)
    k = torch.where((k <= 0) | (k >= values.shape[-1]), values.shape[-1], k)
    return count_above(values) < k


def top_p_mask(probs: torch.Tensor, top_p: Param, slack: float = 0.0) -> torch.Tensor:
    """Kept entries of top-p, with the threshold moved by `slack` (relative to the row mass):
    slack > 0 gives a superset that also admits the tokens whose membership float rounding
    could flip, slack < 0 a subset."""
    p = probs.detach().to("cpu", torch.float64)
    total = p.sum(-1, keepdim=True)
    tp = _per_row(top_p, p.shape[0])
    keep = mass_above(p) < (tp + slack) * total
    return keep | (tp >= 1.0)


def min_p_mask(probs: torch.Tensor, min_p: Param) -> torch.Tensor:
    p = probs.detach().to("cpu", torch.float64)
    mp = _per_row(min_p, p.shape[0]).clamp(0.0, 1.0)
    return p >= mp * p.max(-1, keepdim=True).values


def renormalize(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    p = torch.where(keep, probs.detach().to("cpu", torch.float64), 0.0)
    return p / p.sum(-1, keepdim=True)


def filtered_distribution(probs: torch.Tensor, *, top_k: Optional[Param] = None, top_p: Optional[Param] = None,
                          min_p: Optional[Param] = None, filter_apply_order: str = "top_k_first",
                          slack: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(target distribution, kept mask) that a sampler with these filters draws from.
    "top_k_first": top-p on the renormalised top-k distribution; "joint": both on the original."""
    p = probs.detach().to("cpu", torch.float64).clamp_min(0.0)
    keep = p > 0
    if top_k is not None:
        keep_k = top_k_mask(p, top_k)
        keep = keep & keep_k
        if top_p is not None and filter_apply_order == "top_k_first":
            p = renormalize(p, keep_k)
    if top_p is not None:
        keep = keep & top_p_mask(p, top_p, slack)
    if min_p is not None:
        keep = keep & min_p_mask(p, min_p)
    return renormalize(p, keep), keep


def top_k_renorm_probs(probs: torch.Tensor, top_k: Param) -> torch.Tensor:
    return renormalize(probs, top_k_mask(probs, top_k))


def top_p_renorm_probs(probs: torch.Tensor, top_p: Param) -> torch.Tensor:
    return renormalize(probs, top_p_mask(probs, top_p))


def top_k_mask_logits(logits: torch.Tensor, top_k: Param) -> torch.Tensor:
    x = logits.detach().to("cpu", torch.float64)
    return torch.where(top_k_mask(x, top_k), x, float("-inf"))


def chain_speculative_first_token(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor,
                                  target_probs: torch.Tensor) -> torch.Tensor:
    """Distribution of output_token_ids[:, 0]: the draft token d with probability
    min(1, target(d) / draft(d)), else a draw from relu(target - draft) normalised. It equals
    target_probs[:, 0] when d itself was drawn from draft_probs[:, 0] (the point of the method)."""
    q = draft_probs[:, 0].detach().to("cpu", torch.float64)
    p = target_probs[:, 0].detach().to("cpu", torch.float64)
    d = draft_token_ids[:, 0].detach().to("cpu", torch.int64)[:, None]
    accept = (p.gather(1, d) / q.gather(1, d)).clamp(max=1.0)
    resid = (p - q).clamp_min(0.0)
    resid = resid / resid.sum(-1, keepdim=True).clamp_min(1e-300)
    return accept * torch.zeros_like(p).scatter(1, d, 1.0) + (1 - accept) * resid


def torch_top_p_sampling(probs: torch.Tensor, top_p: float, generator=None) -> torch.Tensor:
    """What a serving stack does without a fused kernel: sort, cumsum, mask, multinomial.
    The plain-torch baseline of the benchmarks (runs on the input's device)."""
    srt, idx = torch.sort(probs, dim=-1, descending=True)
    excl = torch.cumsum(srt, dim=-1) - srt
    srt = srt.masked_fill(excl >= top_p, 0.0)
    pick = torch.multinomial(srt, 1, generator=generator)
    return idx.gather(-1, pick).squeeze(-1)


def torch_top_k_top_p_sampling_from_logits(logits: torch.Tensor, top_k: int, top_p: float,
                                           generator=None) -> torch.Tensor:
    """Plain-torch baseline: topk mask, softmax, then top-p by sort + cumsum + multinomial."""
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
    probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")).float(), dim=-1)
    return torch_top_p_sampling(probs, top_p, generator)
