"""packbits / segment_packbits against numpy.packbits."""
import pytest
import torch

from pyflashinfer.packbits import packbits, segment_packbits
from pyflashinfer.packbits import reference as ref


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
@pytest.mark.parametrize("bitorder", ["big", "little"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float16])
def test_packbits(n, bitorder, dtype, device):
    x = (torch.rand(n) < 0.4).to(dtype)
    out = packbits(x.to(device), bitorder)
    assert out.dtype == torch.uint8
    assert torch.equal(out.cpu(), ref.packbits(x, bitorder))


def test_packbits_flattens_and_empty(device):
    x = torch.rand(3, 5, 7) < 0.5
    assert torch.equal(packbits(x.to(device)).cpu(), ref.packbits(x))
    assert packbits(torch.zeros(0, dtype=torch.bool, device=device)).shape == (0,)


@pytest.mark.parametrize("lengths", [[0], [1], [5, 0, 8, 9, 17, 0], [300, 1, 64, 1000]],
                         ids=["empty", "one", "mixed", "long"])
@pytest.mark.parametrize("bitorder", ["big", "little"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_segment_packbits(lengths, bitorder, index_dtype, device):
    indptr = torch.tensor([0] + lengths).cumsum(0).to(index_dtype)
    x = torch.rand(int(indptr[-1])) < 0.5
    packed, new_indptr = segment_packbits(x.to(device), indptr.to(device), bitorder)
    expect, expect_indptr = ref.segment_packbits(x, indptr, bitorder)
    assert new_indptr.dtype == index_dtype and torch.equal(new_indptr.cpu(), expect_indptr)
    assert torch.equal(packed.cpu(), expect)


def test_bad_inputs(device):
    with pytest.raises(ValueError, match="expected one of"):
        packbits(torch.ones(8, dtype=torch.bool, device=device), "middle")
    with pytest.raises(TypeError, match="expected dtype"):
        segment_packbits(torch.ones(8, dtype=torch.bool, device=device), torch.tensor([0.0, 8.0], device=device))
    with pytest.raises(ValueError, match="expected a 1-D"):
        segment_packbits(torch.ones(2, 4, dtype=torch.bool, device=device), torch.tensor([0, 8], device=device))
