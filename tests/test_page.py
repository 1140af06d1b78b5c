"""Page-table helpers and append_paged_kv_cache against plain PyTorch."""
import pytest
import torch

import pyflashinfer as flashinfer


def test_get_seq_lens(device):
    indptr = torch.tensor([0, 3, 3, 4, 9], dtype=torch.int32, device=device)
    last = torch.tensor([5, 0, 16, 1], dtype=torch.int32, device=device)
    assert flashinfer.get_seq_lens(indptr, last, 16).tolist() == [37, 0, 16, 65]


def test_get_batch_indices_positions_matches_docstring_example(device):
    append_indptr = torch.tensor([0, 1, 3, 6, 10], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([5, 5, 5, 5], dtype=torch.int32, device=device)
    b, pos = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 10)
    assert b.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert pos.tolist() == [4, 3, 4, 2, 3, 4, 1, 2, 3, 4]
    assert b.dtype == torch.int32 and pos.dtype == torch.int32


# (id, append lens, existing lens, page size, layout, cache dtype, single tensor)
APPEND = [
    ("p16-nhd", [1, 5, 17, 0], [0, 10, 15, 3], 16, "NHD", torch.float16, False),
    ("p1-hnd", [3, 2], [4, 0], 1, "HND", torch.bfloat16, True),
    ("p5-fp8", [7, 9], [2, 5], 5, "NHD", torch.float8_e4m3fn, True),
    ("p16-hnd-e5m2", [20], [30], 16, "HND", torch.float8_e5m2, False),
]


@pytest.mark.parametrize("case", APPEND, ids=[c[0] for c in APPEND])
def test_append_paged_kv_cache(case, device):
    _, app, old, page, layout, dtype, single = case
    h, d = 3, 64
    seq = [a + o for a, o in zip(app, old)]
    pages_per = [(s + page - 1) // page for s in seq]
    num_pages = sum(pages_per) + 2
    perm = torch.randperm(num_pages).tolist()
    indptr, indices, last = [0], [], []
    for p, s in zip(pages_per, seq):
        indices += perm[indptr[-1]: indptr[-1] + p]
        indptr.append(indptr[-1] + p)
        last.append(0 if p == 0 else s - (p - 1) * page)
    i32 = dict(dtype=torch.int32, device=device)
    indptr_t, indices_t, last_t = torch.tensor(indptr, **i32), torch.tensor(indices, **i32), torch.tensor(last, **i32)
    shape = (num_pages, 2, page, h, d) if layout == "NHD" else (num_pages, 2, h, page, d)
    cache = torch.randn(shape, device=device).to(dtype)
    before = cache.clone()
    nnz = sum(app)
    k = torch.randn(nnz, h, d, device=device).to(torch.bfloat16)
    v = torch.randn(nnz, h, d, device=device).to(torch.bfloat16)
    append_indptr = torch.tensor([0] + torch.tensor(app).cumsum(0).tolist(), **i32)
    b, pos = flashinfer.get_batch_indices_positions(append_indptr, flashinfer.get_seq_lens(indptr_t, last_t, page), nnz)
    paged = cache if single else (cache[:, 0], cache[:, 1])
    flashinfer.append_paged_kv_cache(k, v, b, pos, paged, indices_t, indptr_t, last_t, kv_layout=layout)

    expect = before.clone()
    for t in range(nnz):
        bb, pp = int(b[t]), int(pos[t])
        page_id = indices[indptr[bb] + pp // page]
        slot = pp % page
        for which, src in ((0, k), (1, v)):
            if layout == "NHD":
                expect[page_id, which, slot] = src[t].to(dtype)
            else:
                expect[page_id, which, :, slot] = src[t].to(dtype)
    assert torch.equal(cache.view(torch.uint8) if dtype.itemsize == 1 else cache,
                       expect.view(torch.uint8) if dtype.itemsize == 1 else expect)


def test_append_rejects_bad_shapes(device):
    cache = torch.randn(4, 2, 16, 2, 64, device=device).half()
    k = torch.randn(3, 2, 64, device=device).half()
    i32 = dict(dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="expected shape"):
        flashinfer.append_paged_kv_cache(k, k[:, :1], torch.zeros(3, **i32), torch.zeros(3, **i32), cache,
                                         torch.zeros(1, **i32), torch.tensor([0, 1], **i32), torch.ones(1, **i32))
    with pytest.raises(ValueError, match="one per appended token"):
        flashinfer.append_paged_kv_cache(k, k, torch.zeros(2, **i32), torch.zeros(3, **i32), cache,
                                         torch.zeros(1, **i32), torch.tensor([0, 1], **i32), torch.ones(1, **i32))
