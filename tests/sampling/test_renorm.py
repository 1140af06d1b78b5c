"""softmax, top_k_renorm_probs, top_k_mask_logits, top_p_renorm_probs against the float64
references; the kept sets must match exactly (top-p: up to float rounding at the boundary)."""
import pytest
import torch

import pyflashinfer.sampling as S
from pyflashinfer.sampling import reference as ref
from sampling_cases import SLACK, llm_logits, probs_of

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _close(out, expect, dtype, what):
    """fp32 math on inputs that are exact in fp64: error within a few output ulps."""
    out = out.detach().cpu().double()
    assert not torch.isnan(out).any(), f"{what}: NaN (unwritten output?)"
    eps = {F32: 2e-6, F16: 2e-3, BF16: 1.6e-2}[dtype]
    err = ((out - expect).abs() / (expect.abs() + 1e-30)).where(expect != 0, out.abs()).max().item()
    assert err <= eps, f"{what}: max relative error {err:.3g} > {eps}"


@pytest.mark.parametrize("vocab,dtype", [(111, F32), (111, F16), (32000, BF16), (128256, F32)],
                         ids=["111-f32", "111-f16", "32000-bf16", "128256-f32"])
@pytest.mark.parametrize("temperature", [None, 0.7, "tensor"])
def test_softmax(vocab, dtype, temperature, device):
    rows = 3 if vocab > 1000 else 8
    logits = llm_logits(rows, vocab).to(dtype)
    logits[0, ::7] = float("-inf")
    if temperature == "tensor":
        temperature = torch.rand(rows) + 0.5
    t = temperature.to(device) if isinstance(temperature, torch.Tensor) else temperature
    out = S.softmax(logits.to(device), temperature=t)
    assert out.dtype == F32 and out.shape == logits.shape
    expect = ref.softmax(logits.float(), temperature)
    err = (out.cpu().double() - expect).abs().max().item()
    assert err <= 1e-6 * max(1.0, expect.max().item()), f"softmax: max abs error {err:.3g}"
    assert (out.cpu()[0, ::7] == 0).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the intended NaN
def test_softmax_all_inf_row_is_nan(device):
    logits = torch.randn(2, 111)
    logits[1] = float("-inf")
    out = S.softmax(logits.to(device)).cpu()
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()  # as torch.softmax


@pytest.mark.parametrize("vocab,dtype,rows", [(111, F32, 16), (111, BF16, 16), (4000, F16, 4), (128256, F32, 2)],
                         ids=["111-f32", "111-bf16", "4000-f16", "128256-f32"])
@pytest.mark.parametrize("k", [1, 7, "tensor"])
def test_top_k_renorm_and_mask(vocab, dtype, rows, k, device):
    logits = llm_logits(rows, vocab).to(dtype)
    if k == "tensor":
        k = torch.randint(1, min(vocab, 300), (rows,))
        k[0] = vocab  # the whole row: nothing masked
    kd = k.to(device) if isinstance(k, torch.Tensor) else k
    masked = S.top_k_mask_logits(logits.to(device), kd)
    assert masked.dtype == dtype
    assert torch.equal(masked.cpu().double(), ref.top_k_mask_logits(logits.double(), k))
    probs = probs_of(logits.float(), dtype)
    renorm = S.top_k_renorm_probs(probs.to(device), kd)
    assert renorm.dtype == dtype
    expect = ref.top_k_renorm_probs(probs.double(), k)
    assert torch.equal(renorm.cpu() > 0, expect > 0), "top_k_renorm_probs: kept set differs"
    _close(renorm, expect, dtype, "top_k_renorm_probs")


def test_top_k_ties_are_kept(device):
    """Entries tied with the k-th largest are all kept (FlashInfer accepts k..#>=pivot)."""
    probs = torch.tensor([[0.3, 0.1, 0.1, 0.1, 0.1, 0.3]])
    out = S.top_k_renorm_probs(probs.to(device), 3).cpu()
    assert torch.allclose(out, probs)
    masked = S.top_k_mask_logits(torch.tensor([[2.0, 1.0, 1.0, 0.0]]).to(device), 2).cpu()
    assert torch.equal(torch.isfinite(masked), torch.tensor([[True, True, True, False]]))


@pytest.mark.parametrize("k", [5, "tensor"])
def test_top_k_rows_of_both_paths(k, device):
    """A row's top k come from its candidates (two passes) unless ties give it more candidates than
    its slots; those rows go to the radix select in a launch of its own, in the same call. Peaky
    rows (N(0, 5^2) logits, where the radix select once went wrong inlined after the candidates'
    path on the H100) beside rows tied everywhere and 3,000 tokens tied at the top."""
    logits = llm_logits(6, 32000, scale=5.0)
    logits[1] = 0.25
    logits[4, 1000:4000] = 40.0
    kt = torch.tensor([5, 5, 50, 300, 5, 32000])  # the last: the whole row
    kk = kt if k == "tensor" else k
    kd = kt.to(device) if k == "tensor" else k
    probs = probs_of(logits)
    renorm = S.top_k_renorm_probs(probs.to(device), kd)
    expect = ref.top_k_renorm_probs(probs.double(), kk)
    assert torch.equal(renorm.cpu() > 0, expect > 0), "top_k_renorm_probs: kept set differs"
    _close(renorm, expect, F32, "top_k_renorm_probs")
    masked = S.top_k_mask_logits(logits.to(device), kd).cpu()
    assert torch.equal(torch.isfinite(masked), ref.top_k_mask(logits, kk)), "top_k_mask_logits: kept set differs"


@pytest.mark.parametrize("vocab,dtype,rows", [(111, F32, 16), (111, F16, 16), (32000, BF16, 2), (128256, F32, 2)],
                         ids=["111-f32", "111-f16", "32000-bf16", "128256-f32"])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0, "tensor"])
def test_top_p_renorm(vocab, dtype, rows, top_p, device):
    probs = probs_of(llm_logits(rows, vocab, scale=2.0), dtype)
    if top_p == "tensor":
        top_p = torch.rand(rows) * 0.98 + 0.01
    tp = top_p.to(device) if isinstance(top_p, torch.Tensor) else top_p
    out = S.top_p_renorm_probs(probs.to(device), tp)
    assert out.dtype == dtype
    kept = out.cpu() > 0
    p64 = probs.double()
    required, allowed = ref.top_p_mask(p64, top_p, -SLACK) & (p64 > 0), ref.top_p_mask(p64, top_p, SLACK)
    assert (kept | ~required).all(), "top_p_renorm_probs dropped a token of the nucleus"
    assert (~kept | allowed).all(), "top_p_renorm_probs kept a token outside the nucleus"
    _close(out, ref.renormalize(p64, kept), dtype, "top_p_renorm_probs")


def test_renorm_then_sample_is_top_p_sampling(device):
    """FlashInfer's note: sampling_from_probs(top_p_renorm_probs(p)) is top-p sampling."""
    probs = probs_of(llm_logits(4, 111, scale=2.0))
    renorm = S.top_p_renorm_probs(probs.to(device), 0.6)
    s = S.sampling_from_probs(renorm, seed=0, offset=0).cpu().long()
    assert ref.top_p_mask(probs, 0.6, SLACK)[torch.arange(4), s].all()


BAD = [
    ("softmax-temp0", lambda d: S.softmax(torch.randn(2, 8, device=d), temperature=0.0), ValueError),
    ("softmax-templen", lambda d: S.softmax(torch.randn(2, 8, device=d), temperature=torch.ones(3, device=d)),
     ValueError),
    ("renorm-topk0", lambda d: S.top_k_renorm_probs(torch.rand(2, 8, device=d), 0), ValueError),
    ("renorm-int", lambda d: S.top_k_renorm_probs(torch.ones(2, 8, dtype=torch.int64, device=d), 2), TypeError),
    ("mask-3d", lambda d: S.top_k_mask_logits(torch.rand(2, 2, 8, device=d), 2), ValueError),
    ("top_p-2", lambda d: S.top_p_renorm_probs(torch.rand(2, 8, device=d), 2.0), ValueError),
]


@pytest.mark.parametrize("name,call,exc", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(name, call, exc, device):
    with pytest.raises(exc, match="expected"):
        call(device)
