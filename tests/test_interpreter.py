"""Under Triton's CPU interpreter the package fixes bf16 and fp8 itself (_interpreter.py), and,
where it cannot (another triton), refuses bf16 and fp8 launches instead of returning garbage."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import INTERPRETING
from pyflashinfer import _interpreter, rmsnorm
from pyflashinfer.norm.reference import rmsnorm_ref

pytestmark = pytest.mark.skipif(not INTERPRETING, reason="the interpreter's fix only matters on the CPU")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# A bf16 rmsnorm in a fresh process: no test set-up, only what importing the package does.
_FRESH = """
import torch, pyflashinfer
from pyflashinfer.norm.reference import rmsnorm_ref
torch.manual_seed(0)
x, w = torch.randn(4, 256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16)
out, ref = pyflashinfer.rmsnorm(x, w).float(), rmsnorm_ref(x.float(), w.float())
print(((out - ref).norm() / ref.norm()).item())
"""


def test_bf16_without_the_test_setup():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=SRC)
    run = subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 1e-2  # garbage (~1e9) without the fix


def test_unfixed_interpreter_refuses_bf16_and_fp8(monkeypatch):
    monkeypatch.setattr(_interpreter, "APPLIED", False)
    x = torch.randn(4, 256)
    with pytest.raises(NotImplementedError, match=r"bfloat16 .*triton 3\.6\.x; this is triton"):
        rmsnorm(x.bfloat16(), torch.randn(256, dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match="float8_e4m3fn"):
        _interpreter.check_dtypes(rmsnorm, {"x": x.to(torch.float8_e4m3fn)})
    out = rmsnorm(x.half(), torch.ones(256, dtype=torch.half))  # numpy computes fp16 and fp32 right
    torch.testing.assert_close(out.float(), rmsnorm_ref(x.half().float(), torch.ones(256)), atol=2e-3, rtol=2e-3)


def test_fix_stays_out_of_another_triton(monkeypatch):
    monkeypatch.setattr(_interpreter, "APPLIED", False)
    monkeypatch.setattr(_interpreter.triton, "__version__", "9.0.0")
    before = _interpreter._B.create_dot
    assert _interpreter.apply() is False
    assert _interpreter._B.create_dot is before and not _interpreter.APPLIED
