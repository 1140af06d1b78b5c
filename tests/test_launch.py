"""Replay's direct call of the C launcher (CPU: Triton's own Python launcher around a recorder).

A Replay unwraps Triton's launcher to skip its per-call Python work; the C launcher must still
receive exactly what Triton's launcher would pass it, descriptors expanded, on the first call
and after new tensors and descriptors come in.
"""
import torch
from triton.backends.nvidia.driver import CudaLauncher, wrap_handle_tensordesc
from triton.tools.tensor_descriptor import TensorDescriptor

from pyflashinfer import _launch

SIGNATURE = {"x_ptr": "*bf16", "x_desc": "tensordesc<bf16[16, 16]>", "n": "i32", "BLOCK": "constexpr",
             "y_desc": "tensordesc<bf16[16, 16]>", "y_ptr": "*bf16"}


class _Run:
    """What a launch reads of Triton's CudaLauncher, around a C launcher that records its arguments."""
    __call__ = CudaLauncher.__call__

    def __init__(self, calls: list, scratch: int = 0):
        self.launch = wrap_handle_tensordesc(lambda *args: calls.append(args), SIGNATURE, None)
        self.num_ctas, self.launch_cooperative_grid, self.launch_pdl = 1, False, False
        self.global_scratch_size = self.profile_scratch_size = scratch
        self.global_scratch_align = self.profile_scratch_align = 1


class _Compiled:
    def __init__(self, calls: list, scratch: int = 0):
        self.run, self.function, self.packed_metadata = _Run(calls, scratch), 1234, (4, 1, 0)


def _desc(n: int) -> TensorDescriptor:
    return TensorDescriptor.from_tensor(torch.zeros(n, 16, dtype=torch.bfloat16), [16, 16])


def _args(x, xd, yd, y) -> dict:
    return dict(x_ptr=x, x_desc=xd, n=7, BLOCK=None, y_desc=yd, y_ptr=y)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(u is v or (type(u) is type(v) and u == v) for u, v in zip(a, b))


def test_replay_passes_what_tritons_launcher_would(monkeypatch):
    monkeypatch.setattr(_launch, "_stream", lambda device: 99)
    calls, expected = [], []
    compiled, reference = _Compiled(calls), _Compiled(expected)
    x, y, xd, yd = torch.zeros(4), torch.zeros(4), _desc(32), _desc(48)
    now = _args(x, xd, yd, y)
    replay = _launch.Replay(compiled, list(now.values()), list(now), (3, 2), device=0)
    assert replay.direct is not None
    for step in ({}, {"x_ptr": torch.zeros(4)}, {"y_desc": _desc(64)}, {"y_desc": _desc(80), "y_ptr": torch.zeros(4)},
                 {"x_desc": xd}, {"x_desc": _desc(16), "n": 5}):
        now.update(step)
        replay(**step)
        reference.run(3, 2, 1, 99, 1234, (4, 1, 0), None, None, None, *now.values())
        assert _same(calls[-1], expected[-1]), (step, calls[-1], expected[-1])


def test_replay_with_scratch_keeps_to_tritons_launcher():
    """A kernel that needs scratch memory gets it from Triton's launcher."""
    now = _args(torch.zeros(4), _desc(32), _desc(48), torch.zeros(4))
    replay = _launch.Replay(_Compiled([], scratch=64), list(now.values()), list(now), (3, 2), device=0)
    assert replay.direct is None
