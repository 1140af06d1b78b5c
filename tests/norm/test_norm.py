"""RMSNorm / LayerNorm entry points against the fp32 reference, contiguous and strided."""
import pytest
import torch

import pyflashinfer.norm as norm
from helpers import assert_close_policy, poisoned
from pyflashinfer.norm.reference import fused_add_rmsnorm_ref, layernorm_ref, rmsnorm_ref

F16, BF16 = torch.float16, torch.bfloat16


def _make(shape, dtype, layout, device):
    """A fresh random input shaped `shape`: contiguous, row-strided (a slice of wider rows), or
    for 3-D a head slice of a [B, H + 3, D] tensor (as QK norm sees q inside qkv)."""
    if layout == "contig":
        return torch.randn(*shape, device=device).to(dtype)
    if layout == "rows":
        return torch.randn(*shape[:-1], shape[-1] + 24, device=device).to(dtype)[..., 5:5 + shape[-1]]
    b, h, d = shape
    return torch.randn(b, h + 3, d, device=device).to(dtype)[:, 2:2 + h]


# (id, shape, dtype, layout, weight dtype)
CASES = [
    ("4096-bf16", (4, 4096), BF16, "contig", BF16),
    ("4096-f16-rows", (3, 4096), F16, "rows", F16),
    ("111-f16", (7, 111), F16, "contig", F16),
    ("111-bf16-rows", (9, 111), BF16, "rows", BF16),
    ("8-f16-many-rows", (33, 8), F16, "contig", F16),
    ("5120-bf16-fp32w", (2, 5120), BF16, "contig", torch.float32),
    ("qk-3d-d128", (5, 4, 128), BF16, "contig", BF16),
    ("qk-3d-d64-strided", (3, 6, 64), F16, "heads", F16),
    ("qk-3d-d80-rows", (4, 3, 80), BF16, "rows", BF16),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("gemma", [False, True], ids=["rmsnorm", "gemma"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rmsnorm(case, gemma, device):
    _, shape, dtype, layout, w_dtype = case
    x = _make(shape, dtype, layout, device)
    w = torch.randn(shape[-1], device=device).to(w_dtype)
    x0 = x.clone()
    fn = norm.gemma_rmsnorm if gemma else norm.rmsnorm
    out = fn(x, w, eps=1e-5)
    assert out.shape == x.shape and out.dtype == dtype and torch.equal(x, x0)
    assert_close_policy(out, rmsnorm_ref(x, w, 1e-5, gemma), rmsnorm_ref(x, w, 1e-5, gemma, dtype=dtype))


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[7]], ids=[IDS[1], IDS[3], IDS[7]])
def test_rmsnorm_out(case, device):
    """out= is written in place (a NaN buffer, strided rows) and returned."""
    _, shape, dtype, layout, _ = case
    x = _make(shape, dtype, layout, device)
    w = torch.randn(shape[-1], device=device).to(dtype)
    out = poisoned(*shape[:-1], shape[-1] + 16, dtype=dtype, device=device)[..., 16:]
    assert norm.rmsnorm(x, w, out=out, enable_pdl=True) is out
    assert_close_policy(out, rmsnorm_ref(x, w), rmsnorm_ref(x, w, dtype=dtype))


FUSED = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[4], CASES[6], CASES[7]]


@pytest.mark.parametrize("gemma", [False, True], ids=["rmsnorm", "gemma"])
@pytest.mark.parametrize("case", FUSED, ids=[c[0] for c in FUSED])
def test_fused_add_rmsnorm(case, gemma, device):
    _, shape, dtype, layout, _ = case
    x = _make(shape, dtype, layout, device)
    r = _make(shape, dtype, layout, device)
    w = torch.randn(shape[-1], device=device).to(dtype)
    x0, r0 = x.clone(), r.clone()
    fn = norm.gemma_fused_add_rmsnorm if gemma else norm.fused_add_rmsnorm
    assert fn(x, r, w, eps=1e-6) is None
    y32, s32 = fused_add_rmsnorm_ref(x0, r0, w, 1e-6, gemma)
    y_lp, s_lp = fused_add_rmsnorm_ref(x0, r0, w, 1e-6, gemma, dtype=dtype)
    assert_close_policy(r, s32, s_lp, name="residual")
    assert_close_policy(x, y32, y_lp, name="input")
    # the residual is the fp32 sum rounded once
    assert torch.equal(r, (x0.float() + r0.float()).to(dtype))


LN = [
    ("4096", (3, 4096), "contig"),
    ("111-rows", (6, 111), "rows"),
    ("8", (17, 8), "contig"),
    ("3000-rows", (2, 3000), "rows"),
]


@pytest.mark.parametrize("case", LN, ids=[c[0] for c in LN])
def test_layernorm(case, device):
    _, shape, layout = case
    x = _make(shape, BF16, layout, device) * 3 + 1.5  # an offset mean, as real activations have
    w, b = torch.randn(shape[-1], device=device), torch.randn(shape[-1], device=device)
    out = norm.layernorm(x, w, b, 1e-5)
    assert out.shape == shape and out.dtype == BF16
    assert_close_policy(out, layernorm_ref(x, w, b, 1e-5), layernorm_ref(x, w, b, 1e-5, dtype=BF16))


@pytest.fixture
def chunked(monkeypatch):
    """Force the wide-row path (rows read in several tiles) on small shapes."""
    monkeypatch.setattr(norm, "_MAX_BLOCK_N", 32)
    monkeypatch.setattr(norm, "_CHUNK_N", 32)


@pytest.mark.parametrize("op", ["rmsnorm", "gemma_rmsnorm", "fused_add_rmsnorm", "layernorm"])
def test_wide_rows_chunked(op, chunked, device):
    x = _make((5, 111), BF16, "rows", device)
    w = torch.randn(111, device=device).to(BF16)
    if op == "layernorm":
        wf, b = torch.randn(111, device=device), torch.randn(111, device=device)
        out = norm.layernorm(x, wf, b)
        assert_close_policy(out, layernorm_ref(x, wf, b), layernorm_ref(x, wf, b, dtype=BF16))
    elif op == "fused_add_rmsnorm":
        r = torch.randn(5, 111, device=device).to(BF16)
        x0, r0 = x.clone(), r.clone()
        norm.fused_add_rmsnorm(x, r, w)
        (y32, s32), (y_lp, s_lp) = fused_add_rmsnorm_ref(x0, r0, w), fused_add_rmsnorm_ref(x0, r0, w, dtype=BF16)
        assert_close_policy(r, s32, s_lp, name="residual")
        assert_close_policy(x, y32, y_lp, name="input")
    else:
        gemma = op == "gemma_rmsnorm"
        out = getattr(norm, op)(x, w)
        assert_close_policy(out, rmsnorm_ref(x, w, gemma=gemma), rmsnorm_ref(x, w, gemma=gemma, dtype=BF16))


def test_empty(device):
    x = torch.zeros(0, 64, device=device).half()
    assert norm.rmsnorm(x, torch.ones(64, device=device).half()).shape == (0, 64)


BAD = [
    ("rank-1", "rmsnorm", lambda d: dict(input=torch.randn(64, device=d).half()), ValueError, "2 or 3-D"),
    ("fp32-input", "rmsnorm", lambda d: dict(input=torch.randn(4, 64, device=d)), TypeError, "float16"),
    ("weight-shape", "rmsnorm", lambda d: dict(weight=torch.randn(32, device=d).half()), ValueError, r"\(64,\)"),
    ("weight-dtype", "rmsnorm", lambda d: dict(weight=torch.randn(64, device=d).bfloat16()), TypeError, "weight"),
    ("out-shape", "rmsnorm", lambda d: dict(out=torch.empty(4, 32, device=d).half()), ValueError, "out"),
    ("out-dtype", "rmsnorm", lambda d: dict(out=torch.empty(4, 64, device=d).bfloat16()), TypeError, "out"),
    ("strided-last", "rmsnorm", lambda d: dict(input=torch.randn(4, 128, device=d).half()[:, ::2]),
     ValueError, "stride 1"),
    ("residual-shape", "fused_add_rmsnorm", lambda d: dict(residual=torch.randn(5, 64, device=d).half()),
     ValueError, "residual"),
    ("residual-dtype", "fused_add_rmsnorm", lambda d: dict(residual=torch.randn(4, 64, device=d).bfloat16()),
     TypeError, "residual"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case, device):
    _, fn, over, exc, msg = case
    args = dict(input=torch.randn(4, 64, device=device).half(), weight=torch.randn(64, device=device).half())
    if fn == "fused_add_rmsnorm":
        args["residual"] = torch.randn(4, 64, device=device).half()
    args.update(over(device))
    with pytest.raises(exc, match=msg):
        getattr(norm, fn)(**args)


BAD_LN = [
    ("fp16-input", dict(input=torch.randn(4, 64).half()), TypeError, "bfloat16"),
    ("3d-input", dict(input=torch.randn(2, 4, 64).bfloat16()), ValueError, "2-D"),
    ("bf16-gemma", dict(gemma=torch.randn(64).bfloat16()), TypeError, "gemma"),
    ("beta-shape", dict(beta=torch.randn(65)), ValueError, "beta"),
]


@pytest.mark.parametrize("case", BAD_LN, ids=[c[0] for c in BAD_LN])
def test_bad_layernorm(case, device):
    _, over, exc, msg = case
    args = dict(input=torch.randn(4, 64).bfloat16(), gemma=torch.randn(64), beta=torch.randn(64))
    args.update(over)
    with pytest.raises(exc, match=msg):
        norm.layernorm(**{n: t.to(device) for n, t in args.items()})
