"""chain_speculative_sampling (speculative decoding with a chain of draft tokens)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import _validate as V
from .._launch import empty_output
from ._common import INDEX_DTYPES, PROB_DTYPES, philox_args
from ._ops import speculative_launch


def _check_counter(name: str, t: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
    if t is None:
        return torch.zeros(batch, dtype=torch.int32, device=device)
    V.check_tensor(name, t, 1)
    V.check_dtype(name, t, INDEX_DTYPES)
    V.check_shape(name, t, (batch,))
    if t.device != device or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor on {device}, got one on {t.device} "
                         f"with strides {tuple(t.stride())}")
    return t


def chain_speculative_sampling(
    draft_probs: torch.Tensor, draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
    maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
    maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
    deterministic: bool = True, generator: Optional[torch.Generator] = None,
    seed: Optional[Union[int, torch.Tensor]] = None, offset: Optional[Union[int, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling of a draft chain (Chen et al. 2023): draft token i is accepted while
    u_i x draft_probs[b, i, d_i] < target_probs[b, i, d_i]; the first rejected position is
    redrawn from relu(target - draft) (normalised), or, when all n are accepted, a bonus token is
    drawn from target_probs[b, n].

    draft_probs: [batch, n, vocab]; draft_token_ids: [batch, n] int32/int64; target_probs:
    [batch, n + 1, vocab] (float32/float16/bfloat16, vocabulary dimension contiguous).
    maybe_output_*: optional [batch] int32/int64 counters, added to in place.
    Returns (output_token_ids [batch, n + 1] int32 padded with -1 after the drawn token,
    accepted_num [batch]: positions whose draft would pass the test on its own (the rejected one
    and those after it are tested again with fresh draws, as FlashInfer does),
    emitted_num [batch]: accepted draft tokens, bonus/redrawn token not counted).
    """
    for name, t in (("draft_probs", draft_probs), ("target_probs", target_probs)):
        V.check_tensor(name, t, 3)
        V.check_dtype(name, t, PROB_DTYPES)
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name}: expected stride 1 along the vocabulary (last) dimension, got "
                             f"strides {tuple(t.stride())}")
    V.check_tensor("draft_token_ids", draft_token_ids, 2)
    V.check_dtype("draft_token_ids", draft_token_ids, INDEX_DTYPES)
    device = V.check_device(draft_probs=draft_probs, draft_token_ids=draft_token_ids, target_probs=target_probs)
    batch, n, vocab = draft_probs.shape
    V.check_shape("draft_token_ids", draft_token_ids, (batch, n))
    V.check_shape("target_probs", target_probs, (batch, n + 1, vocab))
    accepted = _check_counter("maybe_output_accepted_token_num", maybe_output_accepted_token_num, batch, device)
    emitted = _check_counter("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num,
                             batch, device)
    out = empty_output(batch, n + 1, dtype=torch.int32, device=device)
    speculative_launch(draft=draft_probs, ids=draft_token_ids, target=target_probs, out=out, accepted=accepted,
                       emitted=emitted, **philox_args(seed, offset, generator, device, batch))
    return out, accepted, emitted
