"""Gated activations against the fp32 reference: shapes, dtypes, strided rows, out=."""
import pytest
import torch

import pyflashinfer.activation as act
from helpers import assert_close_policy, poisoned
from pyflashinfer.activation.reference import act_and_mul_ref

F16, BF16 = torch.float16, torch.bfloat16
OPS = [("silu", "silu_and_mul"), ("gelu", "gelu_and_mul"), ("gelu_tanh", "gelu_tanh_and_mul")]

# (id, leading shape, d, dtype, strided rows)
CASES = [
    ("4096-bf16", (3,), 4096, BF16, False),
    ("11008-f16", (2,), 11008, F16, False),
    ("111-f16-rows", (7,), 111, F16, True),
    ("8-bf16-many-rows", (37,), 8, BF16, False),
    ("3d-64-f16", (2, 5), 64, F16, False),
    ("1d-24-bf16", (), 24, BF16, False),
]


def _input(lead, d, dtype, strided, device):
    x = torch.randn(*lead, 2 * d + (10 if strided else 0), device=device) * 3  # reach gelu/silu tails
    return (x[..., 3:3 + 2 * d] if strided else x).to(dtype)


@pytest.mark.parametrize("op", OPS, ids=[o[0] for o in OPS])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_act_and_mul(case, op, device):
    _, lead, d, dtype, strided = case
    name, fn = op
    x = _input(lead, d, dtype, strided, device)
    x0 = x.clone()
    out = getattr(act, fn)(x)
    assert out.shape == (*lead, d) and out.dtype == dtype and torch.equal(x, x0)
    assert_close_policy(out, act_and_mul_ref(x, name), act_and_mul_ref(x, name, dtype=dtype))


@pytest.mark.parametrize("op", OPS, ids=[o[0] for o in OPS])
def test_out_buffer(op, device):
    """out= (NaN, strided rows) is written and returned; enable_pdl is accepted."""
    name, fn = op
    x = _input((5,), 100, BF16, True, device)
    out = poisoned(5, 130, dtype=BF16, device=device)[:, 7:107]
    assert getattr(act, fn)(x, out=out, enable_pdl=False) is out
    assert_close_policy(out, act_and_mul_ref(x, name), act_and_mul_ref(x, name, dtype=BF16))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # exp2 -> inf, by design
def test_extreme_values(device):
    """Saturated tails: no NaN/inf from exp overflow in silu or tanh."""
    gate = torch.tensor([-1e4, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0], device=device)
    x = torch.cat([gate, torch.ones_like(gate)])[None].to(F16)
    for name, fn in OPS:
        assert_close_policy(getattr(act, fn)(x), act_and_mul_ref(x, name), act_and_mul_ref(x, name, dtype=F16),
                            name=name)


def test_empty(device):
    assert act.silu_and_mul(torch.zeros(0, 64, device=device).half()).shape == (0, 32)


BAD = [  # built on the test's device: a strided view copied across devices would arrive contiguous
    ("odd-last-dim", lambda d: dict(input=torch.randn(4, 63, device=d).half()), ValueError, "even"),
    ("fp32", lambda d: dict(input=torch.randn(4, 64, device=d)), TypeError, "float16"),
    ("out-shape", lambda d: dict(out=torch.empty(4, 64, device=d).half()), ValueError, r"\(4, 32\)"),
    ("out-dtype", lambda d: dict(out=torch.empty(4, 32, device=d).bfloat16()), TypeError, "out"),
    ("last-dim-strided", lambda d: dict(input=torch.randn(4, 128, device=d).half()[:, ::2]), ValueError, "stride 1"),
    ("leading-dims-not-viewable",
     lambda d: dict(input=torch.randn(3, 4, 80, device=d).half()[:, :, :64].transpose(0, 1)), ValueError, "contiguous"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case, device):
    _, make, exc, msg = case
    args = dict(input=torch.randn(4, 64, device=device).half())
    args.update(make(device))
    with pytest.raises(exc, match=msg):
        act.silu_and_mul(**args)
