"""torch.compile traces the public functions (custom ops with fake implementations), fullgraph."""
import torch

import pyflashinfer.sampling as S


def test_compile_fullgraph(device):
    logits = torch.randn(4, 111).to(device)

    def step(x):
        probs = S.softmax(x, temperature=0.9)
        renorm = S.top_k_renorm_probs(probs, 10)
        masked = S.top_k_mask_logits(x, 10)
        return (S.top_p_sampling_from_probs(renorm, 0.9, seed=1, offset=0),
                S.top_k_top_p_sampling_from_logits(masked, 5, 0.8, seed=2, offset=0),
                S.top_p_renorm_probs(probs, 0.5))

    eager = step(logits)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(logits)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
