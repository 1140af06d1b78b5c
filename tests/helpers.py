"""Tolerance policy and small utilities shared by the tests.

Policy: a kernel's error against the fp32 reference may be at most K times the error that
PyTorch itself makes computing the same thing in the same low precision, plus a small floor.
"""
import torch

K = 2.0
FLOOR = 1e-5


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| over finite entries; -inf/inf must sit in the same places in both."""
    a, b = a.float(), b.float()
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    if not torch.equal(inf_a, inf_b) or not torch.equal(a[inf_a], b[inf_b]):
        return float("inf")
    fin = ~inf_a
    return (a[fin] - b[fin]).abs().max().item() if fin.any() else 0.0


def assert_close_policy(out: torch.Tensor, ref32: torch.Tensor, ref_lowp: torch.Tensor, *,
                        name: str = "out", k: float = K, floor: float = FLOOR) -> None:
    out32 = out.detach().float().cpu()
    ref32 = ref32.detach().float().cpu()
    assert out32.shape == ref32.shape, f"{name}: shape {tuple(out32.shape)} != reference {tuple(ref32.shape)}"
    assert not torch.isnan(out32).any(), f"{name}: {int(torch.isnan(out32).sum())} NaN entries (unwritten?)"
    torch_err = max_err(ref_lowp.detach().cpu(), ref32)
    kernel_err = max_err(out32, ref32)
    budget = k * torch_err + floor
    assert kernel_err <= budget, (f"{name}: max error {kernel_err:.3g} vs fp32 reference exceeds "
                                  f"{k} x torch's own low-precision error {torch_err:.3g} + {floor}")


def lowp_of(dtype: torch.dtype) -> torch.dtype:
    """The low precision PyTorch's own error is measured in (fp8 data computes in the q dtype)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


def poisoned(*shape, dtype, device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
