"""Launch replay of the serving ops (GPU only: the interpreter never replays).

The second call with arguments of the same kind (dtypes, shapes, strides, alignment, scalars)
skips the checks and Triton's argument binding; it must still compute on its own tensors, and
a call of another kind (here: a 16-byte misaligned view, another eps) must not reuse it.
"""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy
from pyflashinfer.activation.reference import act_and_mul_ref
from pyflashinfer.norm.reference import fused_add_rmsnorm_ref, rmsnorm_ref
from pyflashinfer.rope.reference import apply_rope_qk_ref, cos_sin_cache, rope_freqs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="replay happens on the GPU only")
BF16 = torch.bfloat16


def _rows(n, d, device, offset=0):
    """[n, d] bf16 whose data starts `offset` elements into a fresh buffer (offset 1: 2-byte aligned)."""
    return torch.randn(n * d + offset, device=device).to(BF16)[offset:].view(n, d)


def test_rmsnorm_replays_on_new_tensors(device):
    w = torch.randn(256, device=device).to(BF16)
    for offset, eps in ((0, 1e-6), (0, 1e-6), (0, 1e-6), (1, 1e-6), (0, 1e-2), (0, 1e-2)):
        x = _rows(7, 256, device, offset)
        out = flashinfer.rmsnorm(x, w, eps)
        assert_close_policy(out, rmsnorm_ref(x, w, eps), rmsnorm_ref(x, w, eps, dtype=BF16), name="out")
        given = torch.full_like(out, float("nan"))
        flashinfer.rmsnorm(x, w, eps, out=given)
        assert torch.equal(given, out)


def test_fused_add_rmsnorm_replays_in_place(device):
    w = torch.randn(128, device=device).to(BF16)
    for offset in (0, 0, 0, 1, 1):
        x, r = _rows(5, 128, device, offset), _rows(5, 128, device, offset)
        y32, s32 = fused_add_rmsnorm_ref(x, r, w)
        y_lp, s_lp = fused_add_rmsnorm_ref(x, r, w, dtype=BF16)
        flashinfer.fused_add_rmsnorm(x, r, w)
        assert_close_policy(r, s32, s_lp, name="residual")
        assert_close_policy(x, y32, y_lp, name="input")


def test_rope_replays(device):
    for inplace in (False, False, False, True, True, True):
        q, k = torch.randn(9, 4, 64, device=device).to(BF16), torch.randn(9, 2, 64, device=device).to(BF16)
        pos = torch.randint(0, 100, (9,), device=device)
        kw = dict(freqs=rope_freqs(64, 1.0, 1e4))
        ref = apply_rope_qk_ref(q, k, pos, **kw), apply_rope_qk_ref(q, k, pos, dtype=BF16, **kw)
        if inplace:
            flashinfer.apply_rope_pos_ids_inplace(q, k, pos)
            outs = (q, k)
        else:
            outs = flashinfer.apply_rope_pos_ids(q, k, pos)
        for out, r32, rlp in zip(outs, ref[0], ref[1]):
            assert_close_policy(out, r32, rlp, name="rope")


def test_rope_cos_sin_cache_replays(device):
    cache = cos_sin_cache(64, 64).to(device)
    for _ in range(3):
        q, k = torch.randn(6, 4 * 64, device=device).to(BF16), torch.randn(6, 2 * 64, device=device).to(BF16)
        pos = torch.randint(0, 64, (6,), device=device)
        q_out, k_out = flashinfer.apply_rope_with_cos_sin_cache(pos, q, k, 64, cache)
        kw = dict(cache=cache)
        (q32, k32), (qlp, klp) = (apply_rope_qk_ref(q.view(6, 4, 64), k.view(6, 2, 64), pos, **kw),
                                  apply_rope_qk_ref(q.view(6, 4, 64), k.view(6, 2, 64), pos, dtype=BF16, **kw))
        assert_close_policy(q_out.view(6, 4, 64), q32, qlp, name="q")
        assert_close_policy(k_out.view(6, 2, 64), k32, klp, name="k")


def test_silu_and_mul_replays(device):
    for shape in ((3, 5, 96), (3, 5, 96), (3, 5, 96), (15, 96)):
        x = torch.randn(*shape, device=device).to(BF16)
        out = flashinfer.silu_and_mul(x)
        assert_close_policy(out, act_and_mul_ref(x, "silu"), act_and_mul_ref(x, "silu", dtype=BF16), name="out")


def test_sampling_replays_with_its_own_inputs(device):
    """Sampling replays its launch with each call's probabilities, parameters and seed."""
    probs = torch.softmax(torch.randn(4, 1000, device=device) * 3, -1)
    first = flashinfer.top_p_sampling_from_probs(probs, 0.5, seed=7, offset=0)
    for _ in range(2):  # replayed: same seed, same draws
        assert torch.equal(flashinfer.top_p_sampling_from_probs(probs, 0.5, seed=7, offset=0), first)
    flat = torch.full((4, 1000), 1e-3, device=device)
    draws = torch.stack([flashinfer.top_p_sampling_from_probs(flat, 0.5, seed=s, offset=0) for s in range(8)])
    assert len(set(draws.flatten().tolist())) > 8, "a new seed must give new draws"
    one_hot = torch.zeros_like(probs)
    one_hot[torch.arange(4), torch.tensor([3, 1, 4, 1])] = 1.0
    assert flashinfer.top_p_sampling_from_probs(one_hot, 0.5, seed=7, offset=0).tolist() == [3, 1, 4, 1]
    for k in ([1, 1, 1, 1], [1, 2, 1, 2], [1, 1, 1, 1]):  # per-row top_k tensors, read anew
        top_k = torch.tensor(k, device=device)
        s = flashinfer.top_k_sampling_from_probs(probs, top_k).long()
        rank = (probs > probs.gather(1, s[:, None])).sum(1)
        assert (rank < top_k).all()
    unseeded = torch.stack([flashinfer.sampling_from_probs(flat) for _ in range(4)])
    assert len(set(unseeded.flatten().tolist())) > 4, "no seed: a fresh one every call"


def test_sampling_without_seed_follows_the_generator(device):
    """No seed: eager calls take the generator's seed and offset (torch.manual_seed reproduces
    them, and the offset moves on); inside a CUDA graph every replay draws anew."""
    flat = torch.full((64, 1000), 1e-3, device=device)
    torch.manual_seed(5)
    a = flashinfer.sampling_from_probs(flat)
    torch.manual_seed(5)
    b = flashinfer.sampling_from_probs(flat)
    assert torch.equal(a, b)
    assert not torch.equal(b, flashinfer.sampling_from_probs(flat))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        flashinfer.top_p_sampling_from_probs(flat, 0.5)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = flashinfer.top_p_sampling_from_probs(flat, 0.5)
    g.replay()
    first = out.clone()
    g.replay()
    assert not torch.equal(first, out)
