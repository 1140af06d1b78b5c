"""RoPE entry points against the float64-angle reference, over the layouts serving stacks use."""
import pytest
import torch

import pyflashinfer.rope as rope
from helpers import assert_close_policy
from pyflashinfer.rope.reference import apply_rope_ref, cos_sin_cache, pos_ids_from_indptr, rope_freqs

F16, BF16, I32, I64 = torch.float16, torch.bfloat16, torch.int32, torch.int64
LLAMA31 = dict(low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=8192)

# (id, nnz, H_q, H_k, head_dim, rotary_dim, interleave, dtype, pos dtype, max position)
CASES = [
    ("llama-d128-gqa4", 13, 32, 8, 128, None, False, BF16, I64, 4096),
    ("llama-d128-f16-i32", 9, 32, 8, 128, None, False, F16, I32, 2048),
    ("gptj-interleave", 11, 8, 8, 64, None, True, F16, I64, 1000),
    ("partial-rot32-of-d64", 7, 4, 2, 64, 32, False, BF16, I32, 500),
    ("partial-rot96-of-d128", 5, 6, 3, 128, 96, True, F16, I64, 3000),
    ("d256", 3, 4, 1, 256, None, False, BF16, I32, 8000),
    ("d80-odd-heads", 6, 5, 3, 80, None, False, F16, I64, 700),
    ("one-token", 1, 2, 1, 64, None, True, BF16, I64, 10),
    ("rot2", 4, 3, 3, 16, 2, False, F16, I32, 100),
]
IDS = [c[0] for c in CASES]


def _qk(nnz, h_q, h_k, d, dtype, device):
    return (torch.randn(nnz, h_q, d, device=device).to(dtype), torch.randn(nnz, h_k, d, device=device).to(dtype))


def _check(q_out, k_out, q, k, pos, **ref_kw):
    for name, out, x in (("q", q_out, q), ("k", k_out, k)):
        assert out.shape == x.shape and out.dtype == x.dtype
        ref32 = apply_rope_ref(x, pos, **ref_kw)
        ref_lp = apply_rope_ref(x, pos, dtype=x.dtype, **ref_kw)
        assert_close_policy(out, ref32, ref_lp, name=name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_apply_rope_pos_ids(case, device):
    _, nnz, h_q, h_k, d, rot, inter, dtype, pos_dtype, max_pos = case
    q, k = _qk(nnz, h_q, h_k, d, dtype, device)
    q0, k0 = q.clone(), k.clone()
    pos = torch.randint(0, max_pos, (nnz,), device=device, dtype=pos_dtype)
    q_out, k_out = rope.apply_rope_pos_ids(q, k, pos, rotary_dim=rot, interleave=inter, rope_theta=5e5)
    assert torch.equal(q, q0) and torch.equal(k, k0), "out-of-place call modified its inputs"
    rd = d if rot is None else rot
    _check(q_out, k_out, q, k, pos, rotary_dim=rd, interleave=inter, freqs=rope_freqs(rd, 1.0, 5e5))
    if rd < d:  # pass-through dims are copied bit for bit
        assert torch.equal(q_out[..., rd:], q[..., rd:]) and torch.equal(k_out[..., rd:], k[..., rd:])


@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_apply_llama31_rope_pos_ids(case, device):
    _, nnz, h_q, h_k, d, rot, inter, dtype, pos_dtype, _ = case
    q, k = _qk(nnz, h_q, h_k, d, dtype, device)
    pos = torch.randint(0, 30000, (nnz,), device=device, dtype=pos_dtype)
    q_out, k_out = rope.apply_llama31_rope_pos_ids(q, k, pos, rotary_dim=rot, interleave=inter)
    rd = d if rot is None else rot
    _check(q_out, k_out, q, k, pos, rotary_dim=rd, interleave=inter, freqs=rope_freqs(rd, 8.0, 5e5, LLAMA31))


def test_llama31_custom_factors(device):
    q, k = _qk(8, 4, 2, 64, F16, device)
    pos = torch.randint(0, 5000, (8,), device=device)
    kw = dict(rope_scale=4.0, rope_theta=1e4, low_freq_factor=2.0, high_freq_factor=8.0, old_context_len=1024)
    q_out, k_out = rope.apply_llama31_rope_pos_ids(q, k, pos, **kw)
    factors = dict(low_freq_factor=2.0, high_freq_factor=8.0, old_context_len=1024)
    _check(q_out, k_out, q, k, pos, freqs=rope_freqs(64, 4.0, 1e4, factors))


@pytest.mark.parametrize("llama31", [False, True], ids=["rope", "llama31"])
@pytest.mark.parametrize("index_dtype", [I32, I64], ids=["i32", "i64"])
def test_apply_rope_indptr(llama31, index_dtype, device):
    """Ragged batch with an empty request; positions start at each request's offset."""
    lens, offs = [3, 0, 5, 1], [0, 7, 100, 2047]
    indptr = torch.tensor([0, 3, 3, 8, 9], dtype=index_dtype, device=device)
    offsets = torch.tensor(offs, dtype=index_dtype, device=device)
    q, k = _qk(sum(lens), 8, 2, 64, BF16, device)
    fn = rope.apply_llama31_rope if llama31 else rope.apply_rope
    kw = dict(rope_scale=2.0, rope_theta=1e4) if not llama31 else {}
    q_out, k_out = fn(q, k, indptr, offsets, **kw)
    pos = pos_ids_from_indptr(indptr, offsets).to(device)
    freqs = rope_freqs(64, 8.0, 5e5, LLAMA31) if llama31 else rope_freqs(64, 2.0, 1e4)
    _check(q_out, k_out, q, k, pos, freqs=freqs)
    # the same as the pos_ids entry point, bit for bit
    fn_pos = rope.apply_llama31_rope_pos_ids if llama31 else rope.apply_rope_pos_ids
    q_p, k_p = fn_pos(q, k, pos, **kw)
    assert torch.equal(q_out, q_p) and torch.equal(k_out, k_p)


INPLACE = [
    ("rope_pos_ids", "apply_rope_pos_ids", "pos"),
    ("llama31_pos_ids", "apply_llama31_rope_pos_ids", "pos"),
    ("rope_indptr", "apply_rope", "indptr"),
    ("llama31_indptr", "apply_llama31_rope", "indptr"),
]


@pytest.mark.parametrize("rotary_dim", [None, 48], ids=["full", "rot48"])
@pytest.mark.parametrize("case", INPLACE, ids=[c[0] for c in INPLACE])
def test_inplace_on_fused_qkv(case, rotary_dim, device):
    """In-place variants rotate strided slices of a fused qkv tensor, leave v alone, and match
    the out-of-place result bit for bit."""
    _, name, pos_kind = case
    nnz, h_q, h_k, d = 10, 8, 2, 64
    qkv = torch.randn(nnz, h_q + 2 * h_k, d, device=device).to(F16)
    q, k, v = qkv[:, :h_q], qkv[:, h_q:h_q + h_k], qkv[:, h_q + h_k:]
    v0 = v.clone()
    if pos_kind == "pos":
        args = (torch.randint(0, 3000, (nnz,), device=device, dtype=I32),)
    else:
        args = (torch.tensor([0, 4, 10], dtype=I32, device=device), torch.tensor([5, 900], dtype=I32, device=device))
    q_out, k_out = getattr(rope, name)(q, k, *args, rotary_dim=rotary_dim, interleave=True)
    assert getattr(rope, name + "_inplace")(q, k, *args, rotary_dim=rotary_dim, interleave=True) is None
    assert torch.equal(q, q_out) and torch.equal(k, k_out) and torch.equal(v, v0)


COS_SIN = [
    # (id, nnz, H_q, H_k, head_size, rotary_dim, is_neox, dtype, pos dtype)
    ("neox-d128-gqa4", 7, 32, 8, 128, 128, True, BF16, I64),
    ("gptj-d64", 9, 4, 4, 64, 64, False, F16, I32),
    ("neox-partial-64-of-128", 5, 4, 2, 128, 64, True, F16, I64),
    ("gptj-partial-32-of-80", 6, 3, 1, 80, 32, False, BF16, I32),
]


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("case", COS_SIN, ids=[c[0] for c in COS_SIN])
def test_apply_rope_with_cos_sin_cache(case, inplace, device):
    """vLLM layout: query/key are [nnz, H * head_size] slices of one fused qkv projection."""
    _, nnz, h_q, h_k, d, rot, is_neox, dtype, pos_dtype = case
    qkv = torch.randn(nnz, (h_q + 2 * h_k) * d, device=device).to(dtype)
    query, key = qkv[:, :h_q * d], qkv[:, h_q * d:(h_q + h_k) * d]
    q0, k0, v0 = query.clone(), key.clone(), qkv[:, (h_q + h_k) * d:].clone()
    cache = cos_sin_cache(4096, rot, 1e4).to(device)
    pos = torch.randint(0, 4096, (nnz,), device=device, dtype=pos_dtype)
    if inplace:
        rope.apply_rope_with_cos_sin_cache_inplace(pos, query, key, d, cache, is_neox=is_neox)
        q_out, k_out = query, key
        assert torch.equal(qkv[:, (h_q + h_k) * d:], v0)
    else:
        q_out, k_out = rope.apply_rope_with_cos_sin_cache(pos, query, key, d, cache, is_neox=is_neox)
        assert torch.equal(query, q0) and torch.equal(key, k0)
    assert q_out.shape == (nnz, h_q * d) and k_out.shape == (nnz, h_k * d)
    kw = dict(rotary_dim=rot, interleave=not is_neox, cache=cache)
    _check(q_out.view(nnz, h_q, d), k_out.view(nnz, h_k, d), q0.view(nnz, h_q, d), k0.view(nnz, h_k, d), pos, **kw)


def test_cos_sin_cache_matches_formula(device):
    """A cache built from the frequency formula gives the formula's rotation (within rounding)."""
    q, k = _qk(6, 4, 2, 64, F16, device)
    pos = torch.randint(0, 2048, (6,), device=device)
    a = rope.apply_rope_pos_ids(q, k, pos)
    b = rope.apply_rope_with_cos_sin_cache(pos, q.flatten(1), k.flatten(1), 64, cos_sin_cache(2048, 64).to(device))
    assert (a[0].flatten(1).float() - b[0].float()).abs().max().item() < 4e-3
    assert (a[1].flatten(1).float() - b[1].float()).abs().max().item() < 4e-3


def test_empty(device):
    q, k = _qk(0, 4, 2, 64, F16, device)
    q_out, k_out = rope.apply_rope_pos_ids(q, k, torch.zeros(0, dtype=I32, device=device))
    assert q_out.shape == q.shape and k_out.shape == k.shape


def _bad(device, fn="apply_rope_pos_ids", **over):
    q, k = _qk(4, 4, 2, 64, F16, device)
    args = dict(q=q, k=k, pos_ids=torch.arange(4, device=device))
    args.update(over)
    return getattr(rope, fn)(**args)


BAD = [
    ("q-rank", lambda d: dict(q=torch.randn(4, 256, device=d).half()), ValueError, "3-D"),
    ("k-dtype", lambda d: dict(k=torch.randn(4, 2, 64, device=d).bfloat16()), TypeError, "dtype of q"),
    ("fp32", lambda d: dict(q=torch.randn(4, 4, 64, device=d), k=torch.randn(4, 2, 64, device=d)),
     TypeError, "float16"),
    ("nnz-mismatch", lambda d: dict(k=torch.randn(5, 2, 64, device=d).half()), ValueError, "4 tokens"),
    ("head-dim-mismatch", lambda d: dict(k=torch.randn(4, 2, 32, device=d).half()), ValueError, "head_dim 64"),
    ("odd-rotary", lambda d: dict(rotary_dim=33), ValueError, "even"),
    ("rotary-too-big", lambda d: dict(rotary_dim=128), ValueError, "rotary_dim"),
    ("pos-len", lambda d: dict(pos_ids=torch.arange(3, device=d)), ValueError, "(4,)"),
    ("pos-dtype", lambda d: dict(pos_ids=torch.arange(4, device=d).float()), TypeError, "int32"),
    ("last-dim-strided", lambda d: dict(q=torch.randn(4, 4, 128, device=d).half()[..., ::2]), ValueError, "stride 1"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case, device):
    _, over, exc, msg = case
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        _bad(device, **over(device))


def test_bad_indptr_and_llama31(device):
    q, k = _qk(4, 4, 2, 64, F16, device)
    with pytest.raises(ValueError, match="indptr"):
        rope.apply_rope(q, k, torch.tensor([0, 4], device=device), torch.tensor([0, 0], device=device))
    with pytest.raises(ValueError, match="low_freq_factor"):
        rope.apply_llama31_rope_pos_ids(q, k, torch.arange(4, device=device), low_freq_factor=4, high_freq_factor=4)


BAD_CACHE = [
    ("cache-fp16", dict(cos_sin_cache=torch.zeros(16, 64).half()), ValueError, "float32"),
    ("cache-odd-rot", dict(cos_sin_cache=torch.zeros(16, 63)), ValueError, "even rotary_dim"),
    ("cache-rot-too-big", dict(cos_sin_cache=torch.zeros(16, 128)), ValueError, "head_size=64"),
    ("head-size", dict(head_size=48), ValueError, "multiple of head_size=48"),
    ("head-size-3d", dict(query=torch.zeros(4, 4, 32).half()), ValueError, "head_size 64"),
    ("positions-len", dict(positions=torch.arange(5)), ValueError, "positions"),
]


@pytest.mark.parametrize("case", BAD_CACHE, ids=[c[0] for c in BAD_CACHE])
def test_bad_cos_sin_cache(case, device):
    _, over, exc, msg = case
    args = dict(positions=torch.arange(4), query=torch.zeros(4, 256).half(), key=torch.zeros(4, 128).half(),
                head_size=64, cos_sin_cache=torch.zeros(16, 64))
    args.update(over)
    args = {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in args.items()}
    with pytest.raises(exc, match=msg):
        rope.apply_rope_with_cos_sin_cache(**args)
