"""Input builders shared by the attention tests."""
import torch

from pyflashinfer.attention.reference import attention_ref

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def rand_kv(kv_len, num_kv_heads, head_dim, dtype, device, layout="NHD", head_dim_vo=None):
    """Fresh random K/V in `layout`, plus fp8 dequantisation scales (1.0 for 16-bit KV).

    fp8 caches hold x / scale with scale = amax / (0.5 * fp8 max), as a calibrated cache would."""
    head_dim_vo = head_dim_vo or head_dim
    k = torch.randn(kv_len, num_kv_heads, head_dim, device=device)
    v = torch.randn(kv_len, num_kv_heads, head_dim_vo, device=device)
    k_scale = v_scale = 1.0
    if dtype in FP8:
        fmax = torch.finfo(dtype).max
        k_scale = max(k.abs().max().item(), 1e-3) / (0.5 * fmax)
        v_scale = max(v.abs().max().item(), 1e-3) / (0.5 * fmax)
        k, v = (k / k_scale).to(dtype), (v / v_scale).to(dtype)
    else:
        k, v = k.to(dtype), v.to(dtype)
    if layout == "HND":
        k, v = k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
    return k, v, k_scale, v_scale


def as_nhd(t, layout):
    return t.transpose(0, 1) if layout == "HND" else t


def refs(q, k, v, lowp, **kwargs):
    """(fp32 reference, PyTorch's own low-precision result) for one request (NHD inputs)."""
    return attention_ref(q, k, v, **kwargs), attention_ref(q, k, v, compute_dtype=lowp, **kwargs)


def random_paged_cache(kv_lens, num_kv_heads, head_dim, page_size, dtype, device, layout="NHD",
                       as_tuple=True, spare_pages=3):
    """A paged cache holding fresh random K/V for requests of kv_lens, pages scattered at random
    (as an allocator leaves them), plus the page table and the per-request K/V (NHD, fp32 of the
    stored values) the reference reads."""
    pages_per = [(n + page_size - 1) // page_size for n in kv_lens]
    num_pages = sum(pages_per) + spare_pages
    perm = torch.randperm(num_pages)
    shape = (num_pages, 2, page_size, num_kv_heads, head_dim) if layout == "NHD" else \
        (num_pages, 2, num_kv_heads, page_size, head_dim)
    kv_scale = 1.0
    data = torch.randn(shape, device=device)
    if dtype in FP8:
        kv_scale = data.abs().max().item() / (0.5 * torch.finfo(dtype).max)
        data = data / kv_scale
    cache = data.to(dtype)
    indptr, indices, last, ks, vs = [0], [], [], [], []
    nxt = 0
    for n, p in zip(kv_lens, pages_per):
        ids = perm[nxt: nxt + p]
        nxt += p
        indices += ids.tolist()
        indptr.append(indptr[-1] + p)
        last.append(0 if p == 0 else n - (p - 1) * page_size)
        pages = cache[ids.to(device)]                                  # [p, 2, ...]
        if layout == "HND":
            pages = pages.transpose(2, 3)                               # -> [p, 2, page, H, D]
        kv = pages.transpose(0, 1).reshape(2, p * page_size, num_kv_heads, head_dim)[:, :n]
        ks.append(kv[0])
        vs.append(kv[1])
    i32 = dict(dtype=torch.int32, device=device)
    table = (torch.tensor(indptr, **i32), torch.tensor(indices, **i32), torch.tensor(last, **i32))
    paged = (cache[:, 0], cache[:, 1]) if as_tuple else cache
    return paged, table, ks, vs, kv_scale


def sm90() -> bool:
    """Whether the tests run on an sm_90 GPU (where the Gluon prefill kernel runs)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def spy_hopper_prefill(monkeypatch) -> list:
    """What batch_launch.hopper_prefill decides at each launch (True: the Gluon kernel), in order."""
    from pyflashinfer.attention import batch_launch
    used = []
    real = batch_launch.hopper_prefill
    monkeypatch.setattr(batch_launch, "hopper_prefill", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    return used
