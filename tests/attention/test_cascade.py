"""merge_state / merge_state_in_place / merge_states and MultiLevelCascadeAttentionWrapper."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy
from cases import random_paged_cache
from pyflashinfer.attention.reference import attention_ref, merge_states_ref

BF16 = torch.bfloat16


def _states(n, h, d, device, empty_rows=()):
    """A state from real attention (so v and s agree), v rounded to bf16; rows in empty_rows
    have no keys (v = 0, s = -inf)."""
    q = torch.randn(n, h, d, device=device)
    k, v = torch.randn(17, h, d, device=device), torch.randn(17, h, d, device=device)
    o, lse = attention_ref(q, k, v)
    for r in empty_rows:
        o[r], lse[r] = 0.0, float("-inf")
    return o.to(BF16), lse.float()


def test_merge_state(device):
    (va, sa), (vb, sb) = _states(9, 4, 64, device, empty_rows=(2, 5)), _states(9, 4, 64, device, empty_rows=(5,))
    v, s = flashinfer.merge_state(va, sa, vb, sb)
    ref32, ref_lp = merge_states_ref([va, vb], [sa, sb]), merge_states_ref([va, vb], [sa, sb], BF16)
    assert_close_policy(v, ref32[0], ref_lp[0], name="v")
    assert_close_policy(s, ref32[1], ref_lp[1], name="s")
    assert torch.all(v[5] == 0) and torch.all(s[5] == float("-inf"))


def test_merge_state_in_place_with_mask(device):
    (va, sa), (vb, sb) = _states(6, 2, 128, device), _states(6, 2, 128, device)
    mask = torch.tensor([True, False, True, True, False, True], device=device)
    v, s = va.clone(), sa.clone()
    flashinfer.merge_state_in_place(v, s, vb, sb, mask=mask)
    ref32, ref_lp = merge_states_ref([va, vb], [sa, sb]), merge_states_ref([va, vb], [sa, sb], BF16)
    assert_close_policy(v[mask], ref32[0][mask], ref_lp[0][mask], name="v")
    assert_close_policy(s[mask], ref32[1][mask], ref_lp[1][mask], name="s")
    assert torch.equal(v[~mask], va[~mask]) and torch.equal(s[~mask], sa[~mask])
    with pytest.raises(ValueError, match="mask"):
        flashinfer.merge_state_in_place(v, s, vb, sb, mask=mask[:3])


@pytest.mark.parametrize("num_states", [0, 1, 3])
def test_merge_states(num_states, device):
    states = [_states(5, 4, 64, device, empty_rows=(1,)) for _ in range(num_states)]
    v = torch.stack([x[0] for x in states], 1) if states else torch.zeros(5, 0, 4, 64, dtype=BF16, device=device)
    s = torch.stack([x[1] for x in states], 1) if states else torch.zeros(5, 0, 4, device=device)
    out, lse = flashinfer.merge_states(v, s)
    if num_states == 0:
        assert torch.all(out == 0) and torch.all(lse == float("-inf"))
        return
    ref32 = merge_states_ref([x[0] for x in states], [x[1] for x in states])
    ref_lp = merge_states_ref([x[0] for x in states], [x[1] for x in states], BF16)
    assert_close_policy(out, ref32[0], ref_lp[0], name="v")
    assert_close_policy(lse, ref32[1], ref_lp[1], name="s")


def test_merge_rejects_bad_input(device):
    va, sa = _states(4, 2, 64, device)
    with pytest.raises(ValueError, match="s_a"):
        flashinfer.merge_state(va, sa[:, :1], va, sa)
    with pytest.raises(TypeError, match="s_b"):
        flashinfer.merge_state(va, sa, va, sa.half())


def test_cascade_two_levels(device):
    """Level 0: a prefix every request shares (one request of all queries); level 1: each
    request's own pages, causal. The result is attention over prefix + own keys, causal."""
    h_qo, h_kv, d, page, prefix = 8, 2, 64, 16, 40
    qo_lens, own_lens = [3, 5, 1], [10, 33, 1]
    shared, (s_indptr, s_indices, s_last), ks_shared, vs_shared, _ = random_paged_cache(
        [prefix] + own_lens, h_kv, d, page, BF16, device)
    # one pool: request 0 of that cache is the shared prefix, requests 1.. the own pages
    i32 = dict(dtype=torch.int32, device=device)
    qo_indptr = torch.tensor([0, 3, 8, 9], **i32)
    lvl0 = (torch.tensor([0, 9], **i32), s_indptr[:2], s_indices[: int(s_indptr[1])], s_last[:1])
    own_indptr = s_indptr[1:] - s_indptr[1]
    lvl1 = (qo_indptr, own_indptr, s_indices[int(s_indptr[1]):], s_last[1:])
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, torch.empty(8 << 20, dtype=torch.uint8, device=device))
    w.plan(*[list(x) for x in zip(lvl0, lvl1)], h_qo, h_kv, d, page, causal=True, q_data_type=BF16)
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    out = w.run(torch.cat(qs), shared)
    start = 0
    for b, q in enumerate(qs):
        k = torch.cat([ks_shared[0], ks_shared[b + 1]])
        v = torch.cat([vs_shared[0], vs_shared[b + 1]])
        o32, _ = attention_ref(q, k, v, causal=True)
        olp, _ = attention_ref(q, k, v, causal=True, compute_dtype=BF16)
        # two bf16 roundings (each level's output) before the merge: allow both
        assert_close_policy(out[start: start + len(q)], o32, olp, name=f"out[{b}]", k=4)
        start += len(q)


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_legacy_shared_prefix_wrappers(kind, device):
    """Shared prefix (contiguous k/v) + each request's own pages equals attention over their
    concatenation (causal on the whole for prefill: the prefix comes first)."""
    h_qo, h_kv, d, page = 8, 2, 64, 16
    own_lens = [20, 1, 35]
    qo_lens = [1, 1, 1] if kind == "decode" else [4, 1, 6]
    k_shared = torch.randn(30, h_kv, d, device=device).to(BF16)
    v_shared = torch.randn(30, h_kv, d, device=device).to(BF16)
    cache, (indptr, indices, last), ks, vs, _ = random_paged_cache(own_lens, h_kv, d, page, BF16, device)
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    ws = torch.empty(8 << 20, dtype=torch.uint8, device=device)
    if kind == "decode":
        w = flashinfer.BatchDecodeWithSharedPrefixPagedKVCacheWrapper(ws)
        w.begin_forward(indptr, indices, last, h_qo, h_kv, d, page, data_type=BF16)
        out = w.forward(torch.cat(qs), k_shared, v_shared, cache)
    else:
        w = flashinfer.BatchPrefillWithSharedPrefixPagedKVCacheWrapper(ws)
        qo_indptr = torch.tensor([0, 4, 5, 11], dtype=torch.int32, device=device)
        w.begin_forward(qo_indptr, indptr, indices, last, h_qo, h_kv, d, page)
        out = w.forward(torch.cat(qs), k_shared, v_shared, cache, causal=True)
    start = 0
    for b, q in enumerate(qs):
        k, v = torch.cat([k_shared.float(), ks[b]]), torch.cat([v_shared.float(), vs[b]])
        o32, _ = attention_ref(q, k, v, causal=True)
        olp, _ = attention_ref(q, k, v, causal=True, compute_dtype=BF16)
        assert_close_policy(out[start: start + len(q)], o32, olp, name=f"out[{b}]", k=4)
        start += len(q)
