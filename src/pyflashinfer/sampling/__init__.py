"""Sampling for LLM serving, FlashInfer-compatible: softmax, sampling from probabilities or
logits with top-k / top-p / min-p filters, renormalisation and masking by those filters, and
chain speculative sampling. Sorting-free (see kernels/sample.py and kernels/topk.py)."""
from .filters import (softmax, top_k_mask_logits, top_k_renorm_prob, top_k_renorm_probs, top_p_renorm_prob,
                      top_p_renorm_probs)
from .sample import (min_p_sampling_from_probs, sampling_from_logits, sampling_from_probs,
                     top_k_sampling_from_probs, top_k_top_p_sampling_from_logits, top_k_top_p_sampling_from_probs,
                     top_p_sampling_from_probs)
from .speculative import chain_speculative_sampling

__all__ = [
    "softmax", "sampling_from_probs", "sampling_from_logits", "top_k_sampling_from_probs",
    "top_p_sampling_from_probs", "min_p_sampling_from_probs", "top_k_top_p_sampling_from_probs",
    "top_k_top_p_sampling_from_logits", "top_p_renorm_probs", "top_k_renorm_probs", "top_k_mask_logits",
    "top_p_renorm_prob", "top_k_renorm_prob", "chain_speculative_sampling",
]
