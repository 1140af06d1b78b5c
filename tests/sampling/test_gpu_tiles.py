"""The GPU launch configuration (one row per program, 1024-4096-wide tiles, kernels/_common.py)
run through the interpreter. Under the CPU interpreter the other tests use many rows per
program; these make sure the one-row path is right too, and, when the run records kernel
variants (PYFLASHINFER_RECORD_VARIANTS), that tools/aot_check.py compiles the variants an H100
will actually launch."""
import pytest
import torch

import pyflashinfer.sampling as S
import pyflashinfer.sampling._common as common
from pyflashinfer.sampling import reference as ref
from sampling_cases import SLACK, allowed_and_target, llm_logits, probs_of


@pytest.fixture
def gpu_tiles(monkeypatch):
    monkeypatch.setattr(common, "is_interpreting", lambda: False)


@pytest.mark.parametrize("vocab", [111, 1500, 3000, 5000], ids=["tile1024", "tile2048", "tile4096", "tile4096x2"])
def test_samplers(vocab, gpu_tiles, device):
    rows = 2
    logits = llm_logits(rows, vocab, scale=3.0)
    probs = probs_of(logits)
    pd, ld = probs.to(device), logits.to(device)
    r = torch.arange(rows)
    draws = {
        "top_p": (S.top_p_sampling_from_probs(pd, 0.8), dict(top_p=0.8), probs),
        "top_k_top_p_logits": (S.top_k_top_p_sampling_from_logits(ld, 20, 0.8), dict(top_k=20, top_p=0.8), probs),
    }
    if vocab == 5000:
        tk = torch.tensor([3, 50])
        draws.update({
            "plain": (S.sampling_from_probs(pd), {}, probs),
            "logits": (S.sampling_from_logits(ld), {}, probs),
            "top_k": (S.top_k_sampling_from_probs(pd, 10), dict(top_k=10), probs),
            "min_p": (S.min_p_sampling_from_probs(pd, 0.1), dict(min_p=0.1), probs),
            "joint": (S.top_k_top_p_sampling_from_probs(pd, 10, 0.5, filter_apply_order="joint"),
                      dict(top_k=10, top_p=0.5, filter_apply_order="joint"), probs),
            "first": (S.top_k_top_p_sampling_from_probs(pd, 10, 0.5), dict(top_k=10, top_p=0.5), probs),
            "logits-joint-rows": (S.top_k_top_p_sampling_from_logits(
                ld, tk.to(device), torch.tensor([0.9, 0.5], device=device), filter_apply_order="joint"),
                dict(top_k=tk, top_p=torch.tensor([0.9, 0.5]), filter_apply_order="joint"), probs),
            "top_p-int-seed": (S.top_p_sampling_from_probs(pd, 0.8, seed=1, offset=2), dict(top_p=0.8), probs),
            "top_p-tensor-seed": (S.top_p_sampling_from_probs(
                pd, 0.8, seed=torch.tensor([1], device=device), offset=torch.tensor([2], device=device)),
                dict(top_p=0.8), probs),
        })
    for name, (s, filters, p) in draws.items():
        _, allowed = allowed_and_target(p, **filters)
        assert allowed[r, s.cpu().long()].all(), f"{name} at vocab {vocab}: a draw outside the filter"


def test_filters_and_speculative(gpu_tiles, device):
    vocab, rows = 5000, 2
    logits = llm_logits(rows, vocab, scale=3.0)
    probs = probs_of(logits)
    out = S.softmax(logits.to(device), temperature=0.8).cpu().double()
    assert (out - ref.softmax(logits, 0.8)).abs().max() < 1e-6
    assert torch.equal(S.top_k_mask_logits(logits.to(device), 17).cpu().double(), ref.top_k_mask_logits(logits, 17))
    kept = S.top_k_renorm_probs(probs.to(device), 17).cpu() > 0
    assert torch.equal(kept, ref.top_k_mask(probs, 17))
    kept = S.top_p_renorm_probs(probs.to(device), 0.7).cpu() > 0
    assert (kept | ~ref.top_p_mask(probs, 0.7, -SLACK)).all() and (~kept | ref.top_p_mask(probs, 0.7, SLACK)).all()
    draft = probs_of(llm_logits(rows * 2, vocab)).reshape(rows, 2, vocab)
    target = probs_of(llm_logits(rows * 3, vocab)).reshape(rows, 3, vocab)
    ids = torch.randint(0, vocab, (rows, 2), dtype=torch.int32)
    out, acc, emit = S.chain_speculative_sampling(draft.to(device), ids.to(device), target.to(device))
    assert ((out.cpu() >= -1) & (out.cpu() < vocab)).all() and (emit <= acc).all()
