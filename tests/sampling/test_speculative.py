"""chain_speculative_sampling: FlashInfer's worked example exactly, the output layout and
counters, and the distribution of the first emitted token (statistical)."""
import pytest
import torch

import pyflashinfer.sampling as S
from pyflashinfer.sampling import reference as ref
from sampling_cases import N_DRAWS, check_distribution, llm_logits, probs_of


def test_flashinfer_example(device):
    """Token 2 is always accepted (target 0.6 >= draft 0.3); token 1 always rejected (target 0),
    so position 1 is redrawn from relu(target - draft) = [0.8, 0, 0, 0] -> token 0."""
    draft = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.1]]])
    ids = torch.tensor([[2, 1]], dtype=torch.int32)
    target = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]])
    for seed in range(3):
        out, acc, emit = S.chain_speculative_sampling(draft.to(device), ids.to(device), target.to(device),
                                                      seed=seed, offset=0)
        assert out.dtype == torch.int32 and out.cpu().tolist() == [[2, 0, -1]]
        assert acc.cpu().tolist() == [1] and emit.cpu().tolist() == [1]


def test_layout_and_counters(device):
    batch, n, vocab = 64, 3, 111
    draft = probs_of(llm_logits(batch * n, vocab, scale=1.0)).reshape(batch, n, vocab)
    target = probs_of(llm_logits(batch * (n + 1), vocab, scale=1.0)).reshape(batch, n + 1, vocab)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1).reshape(batch, n).to(torch.int64)
    acc0 = torch.full((batch,), 5, dtype=torch.int32)
    emit0 = torch.full((batch,), 7, dtype=torch.int64)
    acc_t, emit_t = acc0.clone().to(device), emit0.clone().to(device)
    out, acc, emit = S.chain_speculative_sampling(draft.to(device), ids.to(device), target.to(device),
                                                  acc_t, emit_t, seed=1, offset=0)
    assert acc is acc_t and emit is emit_t  # added to in place
    out, acc, emit = out.cpu().long(), acc.cpu().long() - 5, emit.cpu() - 7
    for b in range(batch):
        e = int(emit[b])
        assert 0 <= e <= n and e <= acc[b] <= n
        assert out[b, :e].tolist() == ids[b, :e].tolist()  # the accepted prefix
        assert 0 <= out[b, e] < vocab and (out[b, e + 1:] == -1).all()


def test_first_token_distribution(device):
    """Many copies of one request (a stride-0 batch): the first output token follows
    min(1, t/q) on the draft token plus relu(t - q) otherwise."""
    vocab = 111
    draft = probs_of(llm_logits(1, vocab, scale=1.5))[:, None]
    target = probs_of(llm_logits(2, vocab, scale=1.5))[None]
    ids = torch.tensor([[int(draft[0, 0].argmax())]])
    out, _, _ = S.chain_speculative_sampling(
        draft.expand(N_DRAWS, 1, vocab).to(device), ids.expand(N_DRAWS, 1).to(device),
        target.expand(N_DRAWS, 2, vocab).to(device), seed=4, offset=0)
    expect = ref.chain_speculative_first_token(draft, ids, target)
    check_distribution(out[:, 0], torch.zeros(N_DRAWS, dtype=torch.long), expect, expect > 0, "spec first token")


def test_bad_inputs(device):
    draft = torch.rand(2, 3, 8, device=device)
    with pytest.raises(ValueError, match="expected shape"):
        S.chain_speculative_sampling(draft, torch.zeros(2, 3, dtype=torch.int32, device=device),
                                     torch.rand(2, 3, 8, device=device))
    with pytest.raises(TypeError, match="expected dtype"):
        S.chain_speculative_sampling(draft, torch.zeros(2, 3, device=device), torch.rand(2, 4, 8, device=device))
