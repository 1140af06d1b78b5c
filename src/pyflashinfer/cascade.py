"""FlashInfer's `flashinfer.cascade` names: attention-state merging and cascade attention."""
from .attention.cascade import (
    BatchDecodeWithSharedPrefixPagedKVCacheWrapper,
    BatchPrefillWithSharedPrefixPagedKVCacheWrapper,
    MultiLevelCascadeAttentionWrapper,
    merge_state,
    merge_state_in_place,
    merge_states,
)

__all__ = ["BatchDecodeWithSharedPrefixPagedKVCacheWrapper", "BatchPrefillWithSharedPrefixPagedKVCacheWrapper",
           "MultiLevelCascadeAttentionWrapper", "merge_state", "merge_state_in_place", "merge_states"]
