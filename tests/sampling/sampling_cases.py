"""Inputs and statistics shared by the sampling tests.

Statistical rule (never flaky, independent of the seed): with n independent draws from q, the
empirical distribution f has E[TV(f, q)] <= 1/2 sum_i sqrt(q_i (1 - q_i) / n), and TV moves by at
most 1/n when one draw changes, so P(TV > E + t) <= exp(-2 n t^2) (McDiarmid). The bound below
uses t for a failure probability of 1e-6 per check; a correct sampler passes it for any seed,
while a wrong distribution (a filter applied to the wrong set, p^2 instead of p, ...) moves TV
by far more at n = 4096.
"""
import math

import torch

from pyflashinfer.sampling import reference as ref

N_DRAWS = 4096
DELTA = 1e-6
# relative slack for float rounding at the top-p boundary: a token whose "mass above" is within
# SLACK x (row mass) of top_p x (row mass) may legitimately go either way
SLACK = 1e-5


def tv_bound(q: torch.Tensor, n: int, delta: float = DELTA) -> float:
    q = q.double()
    return 0.5 * torch.sqrt(q * (1 - q) / n).sum().item() + math.sqrt(math.log(1 / delta) / (2 * n))


def empirical(samples: torch.Tensor, vocab: int) -> torch.Tensor:
    s = samples.detach().cpu().long()
    return torch.bincount(s, minlength=vocab).double() / s.numel()


def check_distribution(samples: torch.Tensor, row_of_sample: torch.Tensor, target: torch.Tensor,
                       allowed: torch.Tensor, what: str) -> None:
    """Every draw in `allowed` (exact), and per source row TV(empirical, target) within the bound."""
    samples, row_of_sample = samples.cpu().long(), row_of_sample.cpu().long()
    vocab = target.shape[-1]
    assert ((samples >= 0) & (samples < vocab)).all(), f"{what}: token id out of range"
    ok = allowed[row_of_sample, samples]
    assert ok.all(), (f"{what}: {int((~ok).sum())} draws outside the filter, e.g. token "
                      f"{int(samples[~ok][0])} of row {int(row_of_sample[~ok][0])}")
    for r in torch.unique(row_of_sample).tolist():
        sel = row_of_sample == r
        n = int(sel.sum())
        tv = 0.5 * (empirical(samples[sel], vocab) - target[r]).abs().sum().item()
        bound = tv_bound(target[r], n)
        assert tv <= bound, f"{what}: row {r}: TV {tv:.4f} > bound {bound:.4f} over {n} draws"


def llm_logits(rows: int, vocab: int, *, scale: float = 3.0, generator=None) -> torch.Tensor:
    """Peaked, LLM-like logits: Gaussian with a few strong tokens."""
    x = torch.randn(rows, vocab, generator=generator) * scale
    return x


def probs_of(logits: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return torch.softmax(logits.double(), -1).to(dtype)


def interleaved_indices(num_rows: int, n: int, dtype=torch.int64) -> torch.Tensor:
    """Output i samples row i % num_rows: many draws from few rows in one launch."""
    return (torch.arange(n) % num_rows).to(dtype)


def allowed_and_target(probs: torch.Tensor, **filters):
    target, _ = ref.filtered_distribution(probs, **filters)
    _, allowed = ref.filtered_distribution(probs, slack=SLACK, **filters)
    return target, allowed
