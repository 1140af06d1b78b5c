"""softmax, and the filters that return a distribution instead of a sample:
top_p_renorm_probs, top_k_renorm_probs, top_k_mask_logits. No sort: radix select for top-k
(kernels/topk.py), the pivot bracket search for top-p (kernels/renorm.py)."""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from .. import _validate as V
from .._launch import empty_output
from ._common import check_rows, row_param
from ._ops import softmax_launch, top_p_renorm_launch, topk_filter_launch

_TEMPERATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def softmax(logits: torch.Tensor, temperature: Optional[Union[torch.Tensor, float]] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """probs = softmax(logits / temperature) over the last dimension, in float32.

    logits: [batch, vocab] float32/float16/bfloat16 (-inf entries give probability 0; a row of
    only -inf gives NaN, as torch.softmax). temperature: None (1.0), a positive float, or a
    [batch] float tensor (values not checked on the host). enable_pdl: ignored.
    Returns probs [batch, vocab] float32.

    >>> probs = pyflashinfer.softmax(torch.randn(4, 32000, device="cuda"), temperature=0.7)
    """
    device = check_rows("logits", logits)
    batch, vocab = logits.shape
    temp_tensor, temp = None, 1.0
    if isinstance(temperature, torch.Tensor):
        V.check_tensor("temperature", temperature, 1)
        V.check_dtype("temperature", temperature, _TEMPERATURE_DTYPES)
        V.check_shape("temperature", temperature, (batch,))
        if temperature.device != device:
            raise ValueError(f"temperature: expected device {device}, got {temperature.device}")
        temp_tensor = temperature
    elif temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature: expected None, a float or a 1-D tensor, got {type(temperature).__name__}")
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive float, got {temperature}")
        temp = float(temperature)
    out = empty_output(batch, vocab, dtype=torch.float32, device=device)
    softmax_launch(x=logits, out=out, temp_t=temp_tensor, temperature=temp)
    return out


def _filter_out(x: torch.Tensor, name: str, top_k, device) -> tuple:
    batch, vocab = x.shape
    k = row_param("top_k", top_k, batch=batch, num_rows=batch, indices=None, device=device, integer=True,
                  lo=1, hi=vocab)
    return k, empty_output(batch, vocab, dtype=x.dtype, device=device)


def top_k_renorm_probs(probs: torch.Tensor, top_k: Union[torch.Tensor, int],
                       is_deterministic: bool = False) -> torch.Tensor:
    """renorm[i, t] = probs[i, t] / sum(top-k of row i) on the k largest entries (ties with the
    k-th largest kept), 0 elsewhere.

    probs: [batch, vocab] float32/float16/bfloat16. top_k: int in [1, vocab] or a [batch] int
    tensor (values <= 0 or >= vocab keep the whole row). is_deterministic: ignored (always).
    Returns [batch, vocab] in the dtype of probs.
    """
    device = check_rows("probs", probs)
    k, out = _filter_out(probs, "probs", top_k, device)
    topk_filter_launch(x=probs, out=out, top_k_t=k.tensor, top_k=int(k.scalar), renorm=True)
    return out


def top_k_mask_logits(logits: torch.Tensor, top_k: Union[torch.Tensor, int]) -> torch.Tensor:
    """masked[i, t] = logits[i, t] on the k largest logits of row i (ties with the k-th largest
    kept), -inf elsewhere. softmax(top_k_mask_logits(x, k)) == top_k_renorm_probs(softmax(x), k).

    logits: [batch, vocab] float32/float16/bfloat16. top_k: int in [1, vocab] or a [batch] int
    tensor. Returns [batch, vocab] in the dtype of logits.
    """
    device = check_rows("logits", logits)
    k, out = _filter_out(logits, "logits", top_k, device)
    topk_filter_launch(x=logits, out=out, top_k_t=k.tensor, top_k=int(k.scalar), renorm=False)
    return out


def top_p_renorm_probs(probs: torch.Tensor, top_p: Union[torch.Tensor, float],
                       is_deterministic: bool = False) -> torch.Tensor:
    """renorm[i, t] = probs[i, t] / mass(kept) on the top-p nucleus of row i, 0 elsewhere: the
    kept tokens are {t : sum(p_j for p_j > p_t) < top_p x sum(p)} (ties kept), so that
    sampling_from_probs(top_p_renorm_probs(p, q)) is top_p_sampling_from_probs(p, q).

    probs: [batch, vocab] float32/float16/bfloat16. top_p: float in (0, 1] or a [batch] float
    tensor. is_deterministic: ignored (the result never depends on the order of work).
    Returns [batch, vocab] in the dtype of probs.
    """
    device = check_rows("probs", probs)
    batch, vocab = probs.shape
    p = row_param("top_p", top_p, batch=batch, num_rows=batch, indices=None, device=device, integer=False,
                  lo=0.0, hi=1.0, lo_open=True)
    out = empty_output(batch, vocab, dtype=probs.dtype, device=device)
    top_p_renorm_launch(x=probs, out=out, top_p_t=p.tensor, top_p=float(p.scalar))
    return out


top_p_renorm_prob = top_p_renorm_probs
top_k_renorm_prob = top_k_renorm_probs
