"""Batch prefill wrappers (ragged and paged KV) against the fp32 reference, request by request."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy, lowp_of
from cases import FP8, random_paged_cache, sm90, spy_hopper_prefill
from pyflashinfer.attention.reference import attention_ref

F16, BF16, E4M3 = torch.float16, torch.bfloat16, torch.float8_e4m3fn


def _ws(device):
    return torch.empty(8 << 20, dtype=torch.uint8, device=device)


def _i32(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _indptr(lens):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return out


def _check(out, lse, qs, ks, vs, dtype, masks=None, p_dtype=None, **kw):
    """p_dtype: the kernel multiplies P rounded to it (fp8 on the Gluon kernel); so does the
    low-precision reference whose error sets the budget."""
    start = 0
    for b, q in enumerate(qs):
        n = q.shape[0]
        mk = {} if masks is None else dict(custom_mask=masks[b])
        o32, l32 = attention_ref(q, ks[b], vs[b], **mk, **kw)
        olp, llp = attention_ref(q, ks[b], vs[b], compute_dtype=lowp_of(dtype), p_dtype=p_dtype, **mk, **kw)
        assert_close_policy(out[start:start + n], o32, olp, name=f"out[req {b}]")
        assert_close_policy(lse[start:start + n], l32, llp, name=f"lse[req {b}]")
        start += n


def _assert_split(w, case_id):
    """Cases named *split* split their long requests: under the interpreter (8 SMs, short
    chunks) by themselves, on a GPU when the case fixes the split (*fixed*)."""
    if torch.cuda.is_available() and "fixed" not in case_id:
        return
    assert (w.plan_value.num_partials > 0) == ("split" in case_id)


@pytest.fixture(params=["auto", "long", "long-persistent", "short-persistent"])
def hopper_tile(request, monkeypatch):
    """How a plan picks the Gluon kernel's tile at head dim 128 with 16-bit q: by its work
    (launch.SHORT_KEYS, launch.PERSISTENT_KEYS), never the short tile (a program per unit, or
    persistent programs that take many units each: the launch sees 2 SMs), or always the short
    tile on persistent programs (2 SMs: 4 programs). Returns a check of a wrapper's plan."""
    from pyflashinfer.attention import batch_launch, launch
    if request.param.startswith("long"):
        monkeypatch.setattr(launch, "SHORT_KEYS", -1.0)
        persistent = request.param == "long-persistent"
        monkeypatch.setattr(launch, "PERSISTENT_KEYS", float("inf") if persistent else -1.0)
        if persistent:
            monkeypatch.setattr(batch_launch, "num_sms", lambda device: 2)
    elif request.param == "short-persistent":
        monkeypatch.setattr(launch, "SHORT_KEYS", float("inf"))
        monkeypatch.setattr(batch_launch, "num_sms", lambda device: 2)

    def check(w, gluon: bool, d: int, q_dtype: torch.dtype):
        short = w.plan_value.maxnreg is not None
        assert not short or (gluon and d == 128)
        if request.param.startswith("long"):
            persistent = request.param == "long-persistent" and d <= 128 and w.plan_value.packed_mask is None
            assert not short and w.plan_value.persistent == persistent
        elif request.param == "short-persistent" and gluon and d == 128 and q_dtype.itemsize == 2:
            diagonal = w.plan_value.variant.causal or w.plan_value.packed_mask is not None
            assert short == diagonal and (not short or w.plan_value.block_m == w.plan_value.block_n == 64)
    return check


def test_mean_keys():
    """The keys a row sees on average, requests weighted by rows x keys (launch.mean_keys)."""
    from pyflashinfer.attention.launch import mean_keys
    lens = torch.tensor([512, 512, 512, 512])
    assert mean_keys(lens, lens, causal=True) == 256.0
    assert mean_keys(lens, lens, causal=False) == 512.0
    assert mean_keys(torch.tensor([100, 0]), torch.tensor([300, 0]), causal=True) == 250.0  # chunked: 200 + 50
    assert mean_keys(torch.tensor([0, 0]), torch.tensor([0, 5]), causal=False) == 0.0
    # a long request's rows outweigh many short ones
    mixed = mean_keys(torch.tensor([4096] + [100] * 30), torch.tensor([4096] + [100] * 30), causal=True)
    assert 2000 < mixed < 2048


def test_short_tile_choice(monkeypatch):
    """Where a plan on sm_90 takes the Gluon kernel's short tile (launch.SHORT_TILE): 16-bit q at
    head dim 128, rows that see SHORT_KEYS keys or fewer on average, end on a causal diagonal
    and fill a 64-row tile; never with backend="fa2", fp8 q, other head dims or RoPE. Where the
    other tiles run on persistent programs (launch.PERSISTENT_KEYS; not with a custom mask). (The
    device is faked: this checks the choice alone.)"""
    from pyflashinfer.attention import launch
    monkeypatch.setattr(launch, "is_interpreting", lambda: False)
    monkeypatch.setattr(launch, "_is_sm90", lambda device: True)
    dev = torch.device("cuda", 0)

    def tile(keys, q=BF16, kv=BF16, d=128, rows=4096, backend="auto", page=0, rope=False, diagonal=True, mask=False):
        return launch.batch_prefill_tile(dev, backend, q, kv, d, d, page, rows, mask, rope, rope, keys, diagonal)
    assert tile(256.0) == launch.SHORT_TILE and tile(launch.SHORT_KEYS, F16, E4M3, page=16) == launch.SHORT_TILE
    assert tile(2048.0).block_m == 128 and tile(2048.0).maxnreg is None
    for kw in (dict(backend="fa2"), dict(q=E4M3, kv=E4M3), dict(d=64), dict(d=256), dict(rows=32), dict(rope=True),
               dict(diagonal=False)):
        assert tile(256.0, **kw).maxnreg is None, kw
    # Persistent programs for the other tiles where rows see PERSISTENT_KEYS keys or fewer, at head dims up to 128.
    assert tile(256.0, diagonal=False).persistent and tile(launch.PERSISTENT_KEYS).persistent
    assert not tile(2 * launch.PERSISTENT_KEYS).persistent and not tile(256.0, d=256).persistent
    assert not tile(2 * launch.SHORT_KEYS, mask=True).persistent


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, dtype, kwargs)
RAGGED = [
    ("causal-mixed", [5, 0, 40, 1], [5, 3, 100, 77], 8, 2, 64, F16, dict(causal=True)),
    ("noncausal-g3", [17, 9], [30, 9], 6, 2, 64, BF16, {}),
    ("causal-g1-d128", [33, 64], [33, 64], 4, 4, 128, BF16, dict(causal=True)),
    ("window-softcap", [20, 31], [50, 31], 8, 2, 64, F16, dict(causal=True, window_left=8, logits_soft_cap=10.0)),
    ("rope-alibi-g5", [12, 7], [40, 7], 10, 2, 64, BF16, dict(causal=True, pos_encoding_mode="ROPE_LLAMA")),
    ("alibi", [12, 3], [12, 30], 8, 4, 64, F16, dict(causal=True, pos_encoding_mode="ALIBI")),
    ("empty-kv", [4, 6], [0, 6], 4, 2, 64, F16, dict(causal=False)),
    ("split-causal", [10, 3, 0], [600, 3, 400], 8, 2, 64, BF16, dict(causal=True)),
    ("split-g3-noncausal-fixed", [5, 70], [700, 70], 6, 2, 64, F16, dict(fixed_split_size=256)),
    ("split-window", [9], [650], 4, 1, 64, F16, dict(causal=True, window_left=300)),
]


@pytest.mark.parametrize("case", RAGGED, ids=[c[0] for c in RAGGED])
def test_ragged_prefill(case, device):
    _, qo_lens, kv_lens, h_qo, h_kv, d, dtype, kw = case
    qs = [torch.randn(n, h_qo, d, device=device).to(dtype) for n in qo_lens]
    ks = [torch.randn(n, h_kv, d, device=device).to(dtype) for n in kv_lens]
    vs = [torch.randn(n, h_kv, d, device=device).to(dtype) for n in kv_lens]
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device))
    w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=dtype, **kw)
    _assert_split(w, case[0])
    out, lse = w.run(torch.cat(qs), torch.cat(ks), torch.cat(vs), return_lse=True)
    _check(out, lse, qs, ks, vs, dtype, **{k: v for k, v in kw.items() if k != "fixed_split_size"})


def _mask_kwargs(masks, packed, device):
    """plan() keywords for per-request bool masks [qo_len, kv_len]: custom_mask, their bits
    flattened, or packed_custom_mask, each request's bits packed from a byte of its own."""
    flat = torch.cat([m.reshape(-1) for m in masks])
    if not packed:
        return dict(custom_mask=flat)
    bits, _ = flashinfer.segment_packbits(flat, torch.tensor(_indptr([m.numel() for m in masks]), device=device),
                                          bitorder="little")
    return dict(packed_custom_mask=bits)


@pytest.mark.parametrize("packed", [False, True], ids=["bool-mask", "packed-mask"])
def test_ragged_custom_mask(packed, device):
    qo_lens, kv_lens, h_qo, h_kv, d = [9, 3, 14], [600, 3, 14], 4, 2, 64  # the first request splits
    qs = [torch.randn(n, h_qo, d, device=device).half() for n in qo_lens]
    ks = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
    vs = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
    masks = [torch.rand(q, k, device=device) < 0.6 for q, k in zip(qo_lens, kv_lens)]
    masks[0][2] = False  # a fully masked row: o = 0, lse = -inf
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device))
    mk = _mask_kwargs(masks, packed, device)
    w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, causal=True,
           q_data_type=F16, fixed_split_size=256, **mk)
    assert w.plan_value.num_partials > 0
    out, lse = w.run(torch.cat(qs), torch.cat(ks), torch.cat(vs), return_lse=True)
    _check(out, lse, qs, ks, vs, F16, masks=masks)
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("-inf"))


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, page_size, dtype, kv dtype, layout, kwargs)
PAGED = [
    ("chunked-p16", [3, 16, 1, 0], [40, 16, 17, 5], 8, 2, 64, 16, F16, F16, "NHD", dict(causal=True)),
    ("p1-hnd", [5, 8], [9, 8], 4, 4, 64, 1, BF16, BF16, "HND", dict(causal=True)),
    ("p5-g7", [6, 2], [11, 30], 7, 1, 64, 5, F16, F16, "NHD", dict(causal=True)),
    ("fp8", [10, 4], [70, 4], 8, 2, 128, 16, F16, E4M3, "NHD", dict(causal=True)),
    ("d256-window", [9], [33], 4, 2, 256, 16, BF16, BF16, "NHD", dict(causal=True, window_left=5)),
    ("fixed-split-p16", [6, 20, 1], [300, 20, 45], 8, 2, 64, 16, F16, F16, "NHD",
     dict(causal=True, fixed_split_size=4)),
    ("split-p1-alibi", [4, 2], [520, 9], 4, 2, 64, 1, BF16, BF16, "HND", dict(causal=True, pos_encoding_mode="ALIBI")),
]


@pytest.mark.parametrize("case", PAGED, ids=[c[0] for c in PAGED])
def test_paged_prefill(case, device):
    _, qo_lens, kv_lens, h_qo, h_kv, d, page, dtype, kv_dtype, layout, kw = case
    paged, (indptr, indices, last), ks, vs, kv_scale = random_paged_cache(kv_lens, h_kv, d, page, kv_dtype, device,
                                                                         layout, as_tuple=len(kv_lens) % 2 == 0)
    qs = [torch.randn(n, h_qo, d, device=device).to(dtype) for n in qo_lens]
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws(device), layout)
    w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, page, q_data_type=dtype,
           kv_data_type=kv_dtype, **kw)
    _assert_split(w, case[0])
    scales = dict(k_scale=kv_scale, v_scale=kv_scale) if kv_dtype in FP8 else {}
    out, lse = w.run(torch.cat(qs), paged, return_lse=True, **scales)
    _check(out, lse, qs, ks, vs, dtype, **scales, **{k: v for k, v in kw.items() if k != "fixed_split_size"})


@pytest.mark.parametrize("paged", [False, True], ids=["ragged", "paged-p16"])
def test_prefill_sinks(paged, device):
    """Attention sinks (one logit per qo head in the denominator), with a fully masked row
    (window) and an empty KV: out 0 there, lse = the sink's (base 2)."""
    qo_lens, kv_lens, h_qo, h_kv, d = [6, 3, 2], [700, 3, 0], 6, 2, 64  # the first request splits
    sinks = torch.randn(h_qo, device=device) * 2
    qs = [torch.randn(n, h_qo, d, device=device).half() for n in qo_lens]
    kw = dict(causal=True, window_left=400)  # the first request's window spans 2 chunks of 256
    split = dict(fixed_split_size=256 // 16 if paged else 256)
    if paged:
        cache, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, 16, F16, device, "NHD")
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws(device))
        w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, 16, q_data_type=F16, **kw,
               **split)
        out, lse = w.run(torch.cat(qs), cache, sinks=sinks, return_lse=True)
    else:
        ks = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
        vs = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device))
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=F16,
               **kw, **split)
        out, lse = w.run(torch.cat(qs), torch.cat(ks), torch.cat(vs), sinks=sinks, return_lse=True)
    assert w.plan_value.num_partials > 0
    _check(out, lse, qs, ks, vs, F16, sinks=sinks, **kw)
    assert torch.all(out[-2:] == 0)
    torch.testing.assert_close(lse[-1], sinks / torch.log(torch.tensor(2.0)))
    with pytest.raises(ValueError, match="sinks"):
        w.run(torch.cat(qs), *((cache,) if paged else (torch.cat(ks), torch.cat(vs))), sinks=sinks[:-1])


def test_prefill_rejects_bad_input(device):
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device))
    with pytest.raises(ValueError, match="non-decreasing"):
        w.plan(_i32([0, 3, 2], device), _i32([0, 3, 4], device), 4, 2, 64)
    with pytest.raises(ValueError, match="entries"):
        w.plan(_i32([0, 3], device), _i32([0, 3, 4], device), 4, 2, 64)
    w.plan(_i32([0, 3], device), _i32([0, 5], device), 4, 2, 64, custom_mask=None)
    with pytest.raises(ValueError, match="q_data_type"):
        w.run(torch.randn(3, 4, 64, device=device).bfloat16(), *[torch.randn(5, 2, 64, device=device).bfloat16()] * 2)
    with pytest.raises(ValueError, match="shape"):
        w.run(torch.randn(4, 4, 64, device=device).half(), *[torch.randn(5, 2, 64, device=device).half()] * 2)
    with pytest.raises(ValueError, match="entries"):
        w.plan(_i32([0, 3], device), _i32([0, 5], device), 4, 2, 64,
               custom_mask=torch.ones(14, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="qo_indptr_buf"):
        flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device), use_cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches are replayed on the GPU only")
@pytest.mark.parametrize("paged", [False, True], ids=["ragged", "paged-p16"])
def test_repeated_runs_replay_launches(paged, device):
    """Later run() calls replay the first call's launch with the new tensors: each result must
    match the reference, with and without out=/lse=, and with sinks."""
    qo_lens, kv_lens, h_qo, h_kv, d = [7, 40], [30, 40], 8, 2, 128
    kw = dict(causal=True)
    w = (flashinfer.BatchPrefillWithPagedKVCacheWrapper if paged else flashinfer.BatchPrefillWithRaggedKVCacheWrapper)(
        _ws(device))
    cache = None
    for step in range(5):
        qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
        sinks = torch.randn(h_qo, device=device) if step >= 3 else None
        if paged:
            if cache is None:
                cache, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, 16, BF16, device)
                w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, 16, q_data_type=BF16,
                       **kw)
            args = (cache,)
        else:
            ks = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
            vs = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
            if step == 0:
                w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d,
                       q_data_type=BF16, **kw)
            args = (torch.cat(ks), torch.cat(vs))
        if step % 2:
            out = torch.full((sum(qo_lens), h_qo, d), float("nan"), dtype=BF16, device=device)
            lse = torch.full((sum(qo_lens), h_qo), float("nan"), device=device)
            w.run(torch.cat(qs), *args, out=out, lse=lse, return_lse=True, sinks=sinks)
        else:
            out, lse = w.run(torch.cat(qs), *args, return_lse=True, sinks=sinks)
        _check(out, lse, qs, ks, vs, BF16, sinks=sinks, **kw)
    assert w._replay_key is not None, "the fast path should be armed"


def _graph_wrapper(paged, batch, n_pages, device):
    i32 = dict(dtype=torch.int32, device=device)
    ws = torch.empty(64 << 20, dtype=torch.uint8, device=device)  # partial states of any split a graph plan makes
    if paged:
        return flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            ws, use_cuda_graph=True, qo_indptr_buf=torch.empty(batch + 1, **i32),
            paged_kv_indptr_buf=torch.empty(batch + 1, **i32), paged_kv_indices_buf=torch.empty(n_pages, **i32),
            paged_kv_last_page_len_buf=torch.empty(batch, **i32))
    return flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
        ws, use_cuda_graph=True, qo_indptr_buf=torch.empty(batch + 1, **i32),
        kv_indptr_buf=torch.empty(batch + 1, **i32))


def _graph_plan_and_run(w, paged, qo_lens, kv_lens, q_rows, device, h_qo=8, h_kv=2, d=64, run=True):
    """Plan a CUDA-graph wrapper for these lengths; optionally run on a q of q_rows rows (the
    captured size) and check the planned rows."""
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    q = torch.cat(qs + [torch.randn(q_rows - sum(qo_lens), h_qo, d, device=device).to(BF16)])
    if paged:
        cache, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, 16, BF16, device)
        w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, 16, causal=True,
               q_data_type=BF16)
        args = (cache,)
    else:
        ks = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
        vs = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, causal=True,
               q_data_type=BF16)
        args = (torch.cat(ks), torch.cat(vs))
    if run:
        out, lse = w.run(q, *args, return_lse=True)
        _check(out, lse, qs, ks, vs, BF16, causal=True)
    return q, args, qs, ks, vs


@pytest.mark.parametrize("paged", [False, True], ids=["ragged", "paged-p16"])
def test_cuda_graph_mode_replans(paged, device):
    """The CUDA-graph code path (nothing captured here): the first plan fixes the batch, the
    token bound, the grid, the plan buffer and the partial-state views; later plans with other
    lengths reuse them, splitting long KV where the batch is small."""
    w = _graph_wrapper(paged, 3, 128, device)
    _graph_plan_and_run(w, paged, [5, 9, 2], [5, 40, 30], 16, device)
    first = w.plan_value
    for qo_lens, kv_lens, split in (([1, 12, 3], [100, 12, 3], False), ([2, 0, 2], [2, 7, 90], False),
                                    ([6, 1, 2], [1100, 1, 700], True)):  # past the GPU's 1024-token min chunk
        _graph_plan_and_run(w, paged, qo_lens, kv_lens, 16, device)
        plan = w.plan_value
        assert plan.buffer is first.buffer and plan.num_work == first.num_work
        assert plan.part_o.data_ptr() == first.part_o.data_ptr() and (plan.num_partials > 0) == split
    with pytest.raises(ValueError, match="query tokens"):
        _graph_plan_and_run(w, paged, [10, 9, 2], [10, 9, 2], 21, device, run=False)
    with pytest.raises(ValueError, match="batch size"):
        _graph_plan_and_run(w, paged, [5, 9], [5, 9], 14, device, run=False)
    with pytest.raises(ValueError, match="dtypes"):  # the captured launches are those of the first dtypes
        if paged:
            _, (indptr, indices, last), _, _, _ = random_paged_cache([5, 9, 2], 2, 64, 16, BF16, device)
            w.plan(_i32(_indptr([5, 9, 2]), device), indptr, indices, last, 8, 2, 64, 16, q_data_type=BF16,
                   kv_data_type=E4M3)
        else:
            w.plan(_i32(_indptr([5, 9, 2]), device), _i32(_indptr([5, 9, 2]), device), 8, 2, 64, q_data_type=F16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,kv_dtype", [(BF16, BF16), (E4M3, E4M3), (BF16, E4M3)],
                         ids=["bf16", "fp8", "bf16-fp8kv"])
@pytest.mark.parametrize("paged", [False, True], ids=["ragged", "paged-p16"])
def test_cuda_graph_replay_after_replan(paged, dtype, kv_dtype, device):
    """Capture run() under plan A, re-plan B (other lengths, same batch, no more tokens, the
    same K/V storage; B splits its long KV, and its requests are longer than A's, which the
    fp8 pre-passes of the Gluon kernel cover with A's grid), replay, compare B with the reference."""
    h_qo, h_kv, d, page, rows = 8, 2, 64, 16, 200
    qo_a, kv_a = [64, 100, 36], [64, 100, 36]
    qo_b, kv_b = [10, 150, 1], [900, 150, 2000]
    fp8, fp8_kv = dtype == E4M3, kv_dtype == E4M3
    o_dtype, types = (F16 if fp8 else BF16), dict(q_data_type=dtype, kv_data_type=kv_dtype)
    w = _graph_wrapper(paged, 3, 256, device)
    qs = [torch.randn(n, h_qo, d, device=device).to(dtype) for n in qo_b]
    q = torch.randn(rows, h_qo, d, device=device).to(dtype)
    if paged:
        cache, (indptr, indices, last), ks, vs, kv_scale = random_paged_cache(kv_b, h_kv, d, page, kv_dtype, device)
        pages_a = [(n + page - 1) // page for n in kv_a]
        indices_a = torch.cat([indices[indptr[b]: indptr[b] + pages_a[b]] for b in range(3)])
        w.plan(_i32(_indptr(qo_a), device), _i32(_indptr(pages_a), device), indices_a,
               _i32([n - (p - 1) * page for n, p in zip(kv_a, pages_a)], device), h_qo, h_kv, d, page,
               causal=True, **types)
        args = (cache,)
    else:
        ks = [torch.randn(n, h_kv, d, device=device).to(kv_dtype) for n in kv_b]
        vs = [torch.randn(n, h_kv, d, device=device).to(kv_dtype) for n in kv_b]
        kv_scale = 1.0
        args = (torch.cat(ks), torch.cat(vs))
        w.plan(_i32(_indptr(qo_a), device), _i32(_indptr(kv_a), device), h_qo, h_kv, d, causal=True, **types)
    scales = dict(k_scale=kv_scale, v_scale=kv_scale) if fp8_kv else {}
    out = torch.full((rows, h_qo, d), float("nan"), dtype=o_dtype, device=device)
    lse = torch.full((rows, h_qo), float("nan"), device=device)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            w.run(q, *args, out=out, lse=lse, return_lse=True, **scales)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, *args, out=out, lse=lse, return_lse=True, **scales)
    if paged:
        w.plan(_i32(_indptr(qo_b), device), indptr, indices, last, h_qo, h_kv, d, page, causal=True, **types)
    else:
        w.plan(_i32(_indptr(qo_b), device), _i32(_indptr(kv_b), device), h_qo, h_kv, d, causal=True, **types)
    assert w.plan_value.num_partials > 0, "plan B should split its long KV"
    assert (w.plan_value.v_t is not None) == (fp8 and sm90())
    assert (w.plan_value.kv_copy is not None) == (fp8_kv and not fp8 and sm90())
    q[: sum(qo_b)] = torch.cat(qs)
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    _check(out, lse, [x.float() for x in qs] if fp8 else qs, ks, vs, F16 if fp8 else BF16, causal=True,
           p_dtype=E4M3 if w.plan_value.v_t is not None else None, **scales)


def test_fp8_q_prefill(device):
    """fp8 q with an fp8 KV through the ragged wrapper, per-tensor scales as floats."""
    qo_lens, kv_lens, h_qo, h_kv, d = [30, 7], [90, 7], 8, 2, 64
    q8 = [(torch.randn(n, h_qo, d, device=device) * 2).to(E4M3) for n in qo_lens]
    k8 = [(torch.randn(n, h_kv, d, device=device) * 2).to(E4M3) for n in kv_lens]
    v8 = [(torch.randn(n, h_kv, d, device=device) * 2).to(E4M3) for n in kv_lens]
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(device))
    w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, causal=True,
           q_data_type=E4M3, kv_data_type=E4M3)
    assert w.plan_value.o_dtype == F16
    scales = dict(q_scale=0.5, k_scale=0.25, v_scale=2.0)
    out, lse = w.run(torch.cat(q8), torch.cat(k8), torch.cat(v8), return_lse=True, **scales)
    _check(out, lse, [q.float() for q in q8], [k.float() for k in k8], [v.float() for v in v8], F16,
           causal=True, p_dtype=E4M3 if w.plan_value.v_t is not None else None, **scales)
    with pytest.raises(TypeError, match="fp8 KV"):
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=E4M3,
               kv_data_type=F16)


def test_cuda_graph_mode_custom_mask(device):
    """Graph-mode plans with custom masks write them into the caller's buffers, which the launch
    reads; a plan without a mask after one with a mask is refused (the kernel is captured)."""
    qo_lens, kv_lens, h_qo, h_kv, d = [9, 3], [20, 3], 4, 2, 64
    i32 = dict(dtype=torch.int32, device=device)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
        _ws(device), use_cuda_graph=True, qo_indptr_buf=torch.empty(3, **i32), kv_indptr_buf=torch.empty(3, **i32),
        custom_mask_buf=torch.empty(64, dtype=torch.uint8, device=device), mask_indptr_buf=torch.empty(3, **i32))
    for step in range(2):
        qs = [torch.randn(n, h_qo, d, device=device).half() for n in qo_lens]
        ks = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
        vs = [torch.randn(n, h_kv, d, device=device).half() for n in kv_lens]
        masks = [torch.rand(q, k, device=device) < 0.6 for q, k in zip(qo_lens, kv_lens)]
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=F16,
               **_mask_kwargs(masks, False, device))
        assert w.plan_value.packed_mask.data_ptr() == w._mask_buffers[0].data_ptr()
        out, lse = w.run(torch.cat(qs), torch.cat(ks), torch.cat(vs), return_lse=True)
        _check(out, lse, qs, ks, vs, F16, masks=masks)
        qo_lens, kv_lens = [4, 8], [30, 8]
    with pytest.raises(ValueError, match="custom mask"):
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=F16)


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, causal): mixed lengths up to 4096, empty requests,
# chunked prefill (qo_len < kv_len), a split long KV, every kind of group.
HOPPER = [
    ("g1-d128-causal", [512, 0, 77], [512, 5, 900], 8, 8, 128, True),
    ("g4-d128-causal-4k", [4096, 3], [4096, 3], 8, 2, 128, True),
    ("g3-d64-noncausal", [200, 33, 1], [200, 700, 129], 6, 2, 64, False),
    ("g5-d128-chunked", [129, 64], [1000, 2100], 10, 2, 128, True),
    ("g7-d64-split", [16, 300], [9000, 300], 7, 1, 64, True),
    ("g8-d128-kv0", [50, 70], [50, 0], 8, 1, 128, False),
    ("g2-d256-causal", [300, 1], [700, 1], 8, 4, 256, True),
]


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER, ids=[c[0] for c in HOPPER])
def test_hopper_prefill_kernel(case, device, monkeypatch):
    """Plans the Gluon kernel covers run on it (and on the portable kernel with backend="fa2"),
    both within the tolerance policy of the fp32 reference."""
    name, qo_lens, kv_lens, h_qo, h_kv, d, causal = case
    used = spy_hopper_prefill(monkeypatch)
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    ks = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
    vs = [torch.randn(n, h_kv, d, device=device).to(BF16) for n in kv_lens]
    q = torch.cat(qs)
    q_strided = torch.empty(q.shape[0], h_qo, d + 64, dtype=BF16, device=device)[..., :d]  # non-contiguous rows
    q_strided.copy_(q)
    k, v = _kv_with_nan_tail(torch.cat(ks), torch.cat(vs), HOPPER.index(case) % 2 == 1)
    for backend, gluon in (("auto", True), ("fa2", False)):
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device=device),
                                                            backend=backend)
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, causal=causal,
               q_data_type=BF16, fixed_split_size=2048 if "split" in case[0] else None)
        assert w.plan_value.num_partials > 0 or "split" not in case[0]
        out, lse = w.run(q_strided, k, v, return_lse=True)
        assert used[-1] is gluon
        _check(out, lse, qs, ks, vs, BF16, causal=causal)


def _kv_with_nan_tail(k, v, heads_stacked: bool, extra: int = 40):
    """k and v [T, H, D] as views with `extra` NaN rows after T (the wrapper takes K/V longer than
    the plan's KV): heads side by side in a token's row of a fused [T + extra, 2, H, D] buffer, or
    stacked (an HND [H, T + extra, D] buffer seen as NHD)."""
    t, h, d = k.shape
    if heads_stacked:
        kv = torch.full((2, h, t + extra, d), float("nan"), dtype=k.dtype, device=k.device)
        kv[0, :, :t], kv[1, :, :t] = k.transpose(0, 1), v.transpose(0, 1)
        return kv[0].transpose(0, 1), kv[1].transpose(0, 1)
    kv = torch.full((t + extra, 2, h, d), float("nan"), dtype=k.dtype, device=k.device)
    kv[:t, 0], kv[:t, 1] = k, v
    return kv[:, 0], kv[:, 1]


def _poison_unused_rows(cache, indptr, indices, last, layout):
    """NaN in every cache row that holds no request's KV (spare pages, last pages' tails)."""
    page = cache.shape[2] if layout == "NHD" else cache.shape[3]
    known = torch.zeros(cache.shape[0], page, dtype=torch.bool, device=cache.device)
    for b in range(len(indptr) - 1):
        ids = indices[indptr[b]: indptr[b + 1]].long()
        known[ids] = True
        if len(ids):
            known[ids[-1], int(last[b]):] = False
    rows = known[:, None, :, None, None] if layout == "NHD" else known[:, None, None, :, None]
    if cache.element_size() == 1:  # e4m3's NaN, 0x7f (fp8 tensors have no masked_fill)
        cache.view(torch.uint8).masked_fill_(~rows.expand_as(cache), 0x7F)
    else:
        cache.masked_fill_(~rows.expand_as(cache), float("nan"))


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, page_size, layout, causal): pages scattered, last pages
# partly filled, the cache's unused rows and spare pages NaN (the kernel copies whole pages). Pages
# of 1, 3 or 128 tokens reach the kernel through a gathered copy (launch.kv_copied).
HOPPER_PAGED = [
    ("p16-nhd-g4-causal", [300, 0, 17, 129], [1000, 5, 17, 129], 8, 2, 128, 16, "NHD", True),
    ("p64-hnd-g3-noncausal", [64, 200], [700, 200], 6, 2, 64, 64, "HND", False),
    ("p8-nhd-g1-split", [16, 40], [5000, 40], 4, 4, 128, 8, "NHD", True),
    ("p16-nhd-g2-d256-noncausal", [40, 130], [300, 130], 4, 2, 256, 16, "NHD", False),
    ("p1-nhd-g4-causal", [20, 0, 300], [50, 7, 1100], 8, 2, 128, 1, "NHD", True),
    ("p3-hnd-g3-d64-split", [16, 5], [4000, 5], 6, 2, 64, 3, "HND", True),
    ("p128-nhd-g2-noncausal", [70, 129], [600, 129], 4, 2, 128, 128, "NHD", False),
    ("p1-nhd-g5-d256-chunked", [33, 1], [500, 64], 10, 2, 256, 1, "NHD", True),
]


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER_PAGED, ids=[c[0] for c in HOPPER_PAGED])
def test_hopper_paged_prefill_kernel(case, device, monkeypatch, hopper_tile):
    name, qo_lens, kv_lens, h_qo, h_kv, d, page, layout, causal = case
    used = spy_hopper_prefill(monkeypatch)
    cache, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, page, BF16, device, layout,
                                                                  as_tuple=False)
    _poison_unused_rows(cache, indptr, indices, last, layout)
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    for backend in ("auto", "fa2"):
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device=device),
                                                           layout, backend=backend)
        w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, page, causal=causal,
               q_data_type=BF16, fixed_split_size=256 if "split" in name else None)
        assert w.plan_value.num_partials > 0 or "split" not in name
        out, lse = w.run(torch.cat(qs), cache, return_lse=True)
        assert used[-1] is (backend == "auto")
        assert (w.plan_value.kv_copy is not None) is (backend == "auto" and page in (1, 3, 128))
        hopper_tile(w, used[-1], d, BF16)
        _check(out, lse, qs, ks, vs, BF16, causal=causal)


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("view", ["contiguous", "heads-132-apart", "misaligned"])
def test_hopper_short_tile_q_views(view, device, monkeypatch):
    """Persistent programs of the short tile copy Q rows in 16-byte pieces: a q whose heads are
    not a multiple of 8 elements apart (a view of wider rows) or whose data starts off 16 bytes
    runs on a program a unit instead, with the same result."""
    from pyflashinfer.attention import batch_launch, launch
    monkeypatch.setattr(launch, "SHORT_KEYS", float("inf"))
    monkeypatch.setattr(batch_launch, "num_sms", lambda device: 2)
    persistent = []
    real_launch = batch_launch.launch

    def spy(kernel, grid, **kw):
        if "PERSISTENT" in kw:
            persistent.append(kw["PERSISTENT"])
        return real_launch(kernel, grid, **kw)
    monkeypatch.setattr(batch_launch, "launch", spy)
    lens, h_qo, h_kv, d = [300, 77, 1], 8, 2, 128
    n = sum(lens)
    if view == "heads-132-apart":
        q = torch.randn(n, h_qo, d + 4, device=device).to(BF16)[..., :d]
    else:
        offset = 1 if view == "misaligned" else 0
        q = torch.randn(n * h_qo * d + offset, device=device).to(BF16)[offset:].view(n, h_qo, d)
    ks = [torch.randn(m, h_kv, d, device=device).to(BF16) for m in lens]
    vs = [torch.randn(m, h_kv, d, device=device).to(BF16) for m in lens]
    indptr = _i32(_indptr(lens), device)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device=device))
    w.plan(indptr, indptr, h_qo, h_kv, d, causal=True, q_data_type=BF16)
    out, lse = w.run(q, torch.cat(ks), torch.cat(vs), return_lse=True)
    assert w.plan_value.maxnreg is not None and persistent == [view == "contiguous"]
    _check(out, lse, list(q.split(lens)), ks, vs, BF16, causal=True)


def _fixed_split(name: str, page: int) -> dict:
    """The plan's fixed split for a HOPPER_VARIANTS or HOPPER_MASKS case named "split": 256 tokens
    a chunk paged, 512 ragged. (Not 1,024: with a window, the first tile starts at a multiple of
    64 or 128 by the tile, which can leave a request fewer keys than one such chunk.)"""
    return dict(fixed_split_size=256 // page if page else 512) if "split" in name else {}


def _hopper_inputs(case, device):
    """A HOPPER_VARIANTS or HOPPER_MASKS case's KV (_kv_inputs), scales, q per request and sinks."""
    name, qo_lens, kv_lens, h_qo, h_kv, d, page, q_dtype, kv_dtype, with_sinks, _ = case
    fp8_q = q_dtype == E4M3
    kv = _kv_inputs(name, kv_lens, h_kv, d, page, kv_dtype, device)
    if fp8_q:
        scales = dict(q_scale=0.5, k_scale=0.25, v_scale=2.0)
    else:
        scales = dict(k_scale=kv["kv_scale"], v_scale=kv["kv_scale"]) if kv_dtype == E4M3 else {}
    qs = [(torch.randn(n, h_qo, d, device=device) * (4 if fp8_q else 1)).to(q_dtype) for n in qo_lens]
    sinks = torch.randn(h_qo, device=device) * 2 if with_sinks else None
    return kv, scales, qs, sinks


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, page_size (0: ragged), q dtype, kv dtype, sinks, kwargs):
# windows (the plan starts each request's KV at its window, the kernel skips the tiles wholly
# before a row tile's window and masks its edge; window 0: each row sees its own key only), soft
# caps and sinks on the Gluon kernel; splits whose last chunk some row tiles see none of (empty
# partial states).
HOPPER_VARIANTS = [
    ("ragged-g4-d128-window-cap-sinks-split", [700, 0, 40], [3000, 9, 300], 8, 2, 128, 0, BF16, BF16, True,
     dict(causal=True, window_left=300, logits_soft_cap=30.0)),
    ("ragged-g3-d64-noncausal-window", [200, 33], [200, 700], 6, 2, 64, 0, F16, F16, False, dict(window_left=100)),
    ("p16-hnd-g5-d128-chunked-window0-sinks", [129, 64], [1000, 64], 10, 2, 128, 16, BF16, BF16, True,
     dict(causal=True, window_left=0)),
    ("p64-g1-d64-cap", [64, 200], [700, 200], 4, 4, 64, 64, BF16, BF16, False,
     dict(causal=True, logits_soft_cap=10.0)),
    ("ragged-fp8-window-cap-split", [300, 17], [3000, 17], 8, 2, 128, 0, E4M3, E4M3, False,
     dict(causal=True, window_left=1000, logits_soft_cap=20.0)),
    ("p16-fp8kv-g8-cap-window-sinks", [100, 5], [900, 5], 8, 1, 128, 16, BF16, E4M3, True,
     dict(causal=True, window_left=500, logits_soft_cap=15.0)),
    ("ragged-g2-d256-window-cap-sinks", [500, 9], [900, 9], 16, 8, 256, 0, BF16, BF16, True,
     dict(causal=True, window_left=256, logits_soft_cap=50.0)),
    ("p1-g4-d128-chunked-window-split", [100, 30, 0], [3000, 30, 8], 8, 2, 128, 1, BF16, BF16, False,
     dict(causal=True, window_left=700)),
]


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER_VARIANTS, ids=[c[0] for c in HOPPER_VARIANTS])
def test_hopper_prefill_window_softcap_sinks(case, device, monkeypatch, hopper_tile):
    """Sliding windows, soft caps and sinks on the Gluon kernel (and on the portable one with
    backend="fa2"), ragged and paged (unused cache rows NaN), 16-bit, fp8 q/k/v and fp8 KV."""
    name, qo_lens, kv_lens, h_qo, h_kv, d, page, q_dtype, kv_dtype, with_sinks, kw = case
    used = spy_hopper_prefill(monkeypatch)
    fp8_q = q_dtype == E4M3
    kv, scales, qs, sinks = _hopper_inputs(case, device)
    split = _fixed_split(name, page)
    for backend in ("auto", "fa2"):
        ws = torch.empty(64 << 20, dtype=torch.uint8, device=device)
        w, out, lse = _plan_and_run(kv, qo_lens, kv_lens, h_qo, h_kv, d, page, qs, ws, dict(sinks=sinks, **scales),
                                    device, backend, q_data_type=q_dtype, kv_data_type=kv_dtype, **kw, **split)
        gluon = backend == "auto"
        assert used[-1] is gluon
        assert w.plan_value.num_partials > 0 or "split" not in name
        hopper_tile(w, gluon, d, q_dtype)
        _check(out, lse, qs, kv["ks"], kv["vs"], F16 if fp8_q else q_dtype, sinks=sinks,
               p_dtype=E4M3 if fp8_q and gluon else None, **scales, **kw)


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, page_size (0: ragged), q dtype, kv dtype, sinks, kwargs):
# per-request custom masks on the Gluon kernel (bool, or packed bits where the name says), ragged
# and paged (read in place, or through a copy: pages of 1, an fp8 KV), kv lengths that are no
# multiple of 8 (rows whose bits start mid-byte), a fully masked row, with splits, windows, caps,
# sinks, fp8 q/k/v and 128-row tiles at head dim 256.
HOPPER_MASKS = [
    ("ragged-g4-d128-split-packed", [64, 0, 7], [3001, 5, 300], 8, 2, 128, 0, BF16, BF16, False, {}),
    ("p16-hnd-g3-d64", [33, 130], [1001, 130], 6, 2, 64, 16, F16, F16, False, {}),
    ("p1-g5-d128-window-cap-sinks", [20, 50], [777, 50], 10, 2, 128, 1, BF16, BF16, True,
     dict(window_left=200, logits_soft_cap=20.0)),
    ("ragged-fp8-g2-d128-packed", [100, 9], [901, 9], 4, 2, 128, 0, E4M3, E4M3, False, {}),
    ("ragged-g2-d256", [150, 1], [413, 1], 8, 4, 256, 0, BF16, BF16, False, {}),
    ("p16-fp8kv-g8-d128", [40, 3], [555, 3], 8, 1, 128, 16, BF16, E4M3, False, {}),
]


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER_MASKS, ids=[c[0] for c in HOPPER_MASKS])
def test_hopper_prefill_custom_mask(case, device, monkeypatch, hopper_tile):
    """Custom masks on the Gluon kernel (and on the portable one with backend="fa2"); causal=True
    is planned too, which a custom mask overrides."""
    name, qo_lens, kv_lens, h_qo, h_kv, d, page, q_dtype, kv_dtype, with_sinks, kw = case
    used = spy_hopper_prefill(monkeypatch)
    fp8_q = q_dtype == E4M3
    kv, scales, qs, sinks = _hopper_inputs(case, device)
    masks = [torch.rand(q, k, device=device) < 0.5 for q, k in zip(qo_lens, kv_lens)]
    for m in masks:  # keys whose bits are all 1, then all 0, in every row: whole tiles of each
        m[:, : m.shape[1] // 3] = True
        m[:, m.shape[1] // 3: m.shape[1] // 2] = False
    masks[0][min(2, qo_lens[0] - 1)] = False  # a fully masked row: o = 0, lse = -inf
    mk = _mask_kwargs(masks, "packed" in name, device)
    split = _fixed_split(name, page)
    for backend in ("auto", "fa2"):
        ws = torch.empty(64 << 20, dtype=torch.uint8, device=device)
        w, out, lse = _plan_and_run(kv, qo_lens, kv_lens, h_qo, h_kv, d, page, qs, ws, dict(sinks=sinks, **scales),
                                    device, backend, causal=True, q_data_type=q_dtype, kv_data_type=kv_dtype,
                                    **mk, **kw, **split)
        gluon = backend == "auto"
        assert used[-1] is gluon
        assert w.plan_value.num_partials > 0 or "split" not in name
        assert w.plan_value.block_m == 128 or d != 256 or not gluon
        hopper_tile(w, gluon, d, q_dtype)
        _check(out, lse, qs, kv["ks"], kv["vs"], F16 if fp8_q else q_dtype, masks=masks, sinks=sinks,
               p_dtype=E4M3 if fp8_q and gluon else None, **scales, **kw)
        row = min(2, qo_lens[0] - 1)
        assert torch.all(out[row] == 0) and (with_sinks or torch.all(lse[row] == float("-inf")))


@pytest.mark.parametrize("page,grid_kv", [(0, None), (16, None), (5, 1)], ids=["ragged", "p16", "p5-looped"])
def test_write_vt(page, grid_kv, device):
    """The fp8 Hopper path's V^T pass: each request's V transposed into its columns (16-aligned,
    a gap of 32 after each request), in P's column order within 16, zeros up to the next 16.
    looped: a grid sized for shorter requests (a CUDA graph's first plan) still covers them."""
    from pyflashinfer.attention.launch import prepass_len, write_vt
    kv_lens, h_kv, d = [0, 37, 16, 300], 2, 64
    if page:
        cache, (indptr, indices, _), _, vs, _ = random_paged_cache(kv_lens, h_kv, d, page, E4M3, device)
        v, strides, starts = cache[1], (cache[1].stride(0), cache[1].stride(1), cache[1].stride(2)), indptr
        tokens = int(indptr[-1]) * page
    else:
        vs = [torch.randn(n, h_kv, d, device=device).to(E4M3) for n in kv_lens]
        v, indices = torch.cat(vs), None
        strides, starts, tokens = (0, v.stride(0), v.stride(1)), _i32(_indptr(kv_lens), device), sum(kv_lens)
    vt = torch.full((h_kv, d, prepass_len(tokens, len(kv_lens))), float("nan"), device=device).to(E4M3)
    write_vt(vt, v, _i32(kv_lens, device), starts, indices, strides, page, len(kv_lens), grid_kv or max(kv_lens))
    perm16 = [4 * (c // 2 % 4) + 2 * (c // 8) + c % 2 for c in range(16)]
    for b, n in enumerate(kv_lens):
        base = (int(starts[b]) * max(page, 1) + 15) // 16 * 16 + 32 * b
        want = torch.zeros(h_kv, d, (n + 15) // 16 * 16)
        want[:, :, :n] = vs[b].float().permute(1, 2, 0)
        cols = torch.tensor([base + t - t % 16 + perm16[t % 16] for t in range(want.shape[2])], dtype=torch.long)
        assert torch.equal(vt[:, :, cols.to(device)].float().cpu(), want.cpu()), f"request {b}"


@pytest.mark.parametrize("page,grid_kv,kv_dtype,window", [(0, 1, E4M3, -1), (16, None, E4M3, -1), (1, None, BF16, -1),
                                                           (3, 1, BF16, -1), (1, None, BF16, 40), (0, 1, E4M3, 0)],
                         ids=["fp8-ragged-looped", "fp8-p16", "bf16-p1", "bf16-p3-looped", "bf16-p1-window",
                              "fp8-ragged-looped-window0"])
def test_copy_kv(page, grid_kv, kv_dtype, window, device):
    """The pass that lets the Hopper kernel read an fp8 KV (dequantized) or pages it does not copy
    itself (gathered): each request's K and V in q's dtype, at its rows (16-aligned, a gap of 32
    after each request); with a sliding window only from the plan's window_start (here aligned
    to 16) on, the rows before it left as they were."""
    from pyflashinfer.attention.launch import copy_kv, prepass_len
    kv_lens, h_kv, d = [0, 37, 200, 16], 2, 64
    if page:
        cache, (indptr, indices, _), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, page, kv_dtype, device)
        k, v = cache[0], cache[1]
        strides = (k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2))
        starts, tokens = indptr, int(indptr[-1]) * page
    else:
        ks = [torch.randn(n, h_kv, d, device=device).to(kv_dtype) for n in kv_lens]
        vs = [torch.randn(n, h_kv, d, device=device).to(kv_dtype) for n in kv_lens]
        k, v, indices = torch.cat(ks), torch.cat(vs), None
        strides = (0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1))
        starts, tokens = _i32(_indptr(kv_lens), device), sum(kv_lens)
    n = prepass_len(tokens, len(kv_lens))
    kd, vd = (torch.full((n, h_kv, d), float("nan"), dtype=BF16, device=device) for _ in range(2))
    qo_lens = [0, 5, 7, 3]
    copy_kv(kd, vd, k, v, _i32(kv_lens, device), starts, indices, strides, page, len(kv_lens),
            grid_kv or max(kv_lens), _i32(_indptr(qo_lens), device), window, 16)
    for b, length in enumerate(kv_lens):
        base = (int(starts[b]) * max(page, 1) + 15) // 16 * 16 + 32 * b
        first = max(length - qo_lens[b] - window, 0) // 16 * 16 if window >= 0 else 0
        assert torch.equal(kd[base + first: base + length].float().cpu(), ks[b][first:].float().cpu()), f"k of {b}"
        assert torch.equal(vd[base + first: base + length].float().cpu(), vs[b][first:].float().cpu()), f"v of {b}"
        assert torch.isnan(kd[base: base + first].float()).all() and torch.isnan(vd[base: base + first].float()).all()


# (id, qo_lens, kv_lens, H_qo, H_kv, head_dim, page_size, causal): fp8 e4m3 q/k/v on the Gluon
# kernel, ragged and paged, with a split long KV and empty requests.
HOPPER_FP8 = [
    ("ragged-g4-d128-causal", [300, 0, 77, 1], [300, 5, 900, 17], 8, 2, 128, 0, True),
    ("ragged-g3-d64-noncausal-split", [16, 40], [5000, 40], 6, 2, 64, 0, False),
    ("p16-g1-d128-causal", [129, 64, 0], [1000, 64, 30], 4, 4, 128, 16, True),
    ("p8-g5-d64-chunked-split", [20, 7], [3333, 7], 10, 2, 64, 8, True),
    ("p32-hnd-g2-d128-noncausal", [50, 17], [700, 17], 4, 2, 128, 32, False),
]


def _kv_inputs(name, kv_lens, h_kv, d, page, kv_dtype, device) -> dict:
    """A Gluon case's KV in kv_dtype: ks/vs per request and their scale (ragged e4m3: 4 x normal
    values, scale 0.5); paged, also the cache (its unused rows NaN), its layout ("hnd" in the
    case's name: HND) and page table."""
    if not page:
        amp, kv_scale = (4, 0.5) if kv_dtype == E4M3 else (1, 1.0)
        ks, vs = ([(torch.randn(n, h_kv, d, device=device) * amp).to(kv_dtype) for n in kv_lens] for _ in range(2))
        return dict(kv_scale=kv_scale, ks=ks, vs=vs)
    layout = "HND" if "hnd" in name else "NHD"
    cache, table, ks, vs, kv_scale = random_paged_cache(kv_lens, h_kv, d, page, kv_dtype, device, layout,
                                                       as_tuple=False)
    _poison_unused_rows(cache, *table, layout)
    return dict(kv_scale=kv_scale, ks=ks, vs=vs, cache=cache, layout=layout, table=table)


def _plan_and_run(kv, qo_lens, kv_lens, h_qo, h_kv, d, page, qs, ws, run_kw, device, backend="auto", **plan_kw):
    """Plan a batch over kv (_kv_inputs; ragged or paged) and run it with run_kw; (wrapper, out, lse)."""
    if page:
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, kv["layout"], backend=backend)
        w.plan(_i32(_indptr(qo_lens), device), *kv["table"], h_qo, h_kv, d, page, **plan_kw)
        out, lse = w.run(torch.cat(qs), kv["cache"], return_lse=True, **run_kw)
    else:
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, backend=backend)
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, **plan_kw)
        out, lse = w.run(torch.cat(qs), torch.cat(kv["ks"]), torch.cat(kv["vs"]), return_lse=True, **run_kw)
    return w, out, lse


def _fp8_kv(case, device) -> dict:
    name, _, kv_lens, _, h_kv, d, page, _ = case
    return _kv_inputs(name, kv_lens, h_kv, d, page, E4M3, device)


def _plan_and_run_fp8_case(case, kv, qs, ws, q_data_type, scales, device, backend="auto"):
    """Plan the case (fp8 KV, ragged or paged; split as its name says) and run it; (wrapper, out, lse)."""
    name, qo_lens, kv_lens, h_qo, h_kv, d, page, causal = case
    split = ("split" in name) * (256 // max(page, 1) if page else 2048)
    w, out, lse = _plan_and_run(kv, qo_lens, kv_lens, h_qo, h_kv, d, page, qs, ws, scales, device, backend,
                                causal=causal, q_data_type=q_data_type, kv_data_type=E4M3,
                                fixed_split_size=split or None)
    assert w.plan_value.num_partials > 0 or "split" not in name
    return w, out, lse


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER_FP8[:1] + HOPPER_FP8[2:], ids=[c[0] for c in HOPPER_FP8[:1] + HOPPER_FP8[2:]])
def test_hopper_fp8_kv_prefill_kernel(case, device, monkeypatch):
    """bf16 q over an fp8 e4m3 KV with scales: on the Gluon kernel through the dequantized copy
    in the float workspace; with a workspace too small for it (unsplit plans, whose partial
    states need none), on the portable kernel."""
    used = spy_hopper_prefill(monkeypatch)
    _, qo_lens, _, h_qo, _, d, _, causal = case
    kv = _fp8_kv(case, device)
    qs = [torch.randn(n, h_qo, d, device=device).to(BF16) for n in qo_lens]
    scales = dict(k_scale=kv["kv_scale"], v_scale=kv["kv_scale"])
    for ws_bytes, gluon in ((64 << 20, True),) + (() if "split" in case[0] else ((4 << 10, False),)):
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        w, out, lse = _plan_and_run_fp8_case(case, kv, qs, ws, BF16, scales, device)
        assert used[-1] is gluon and (w.plan_value.kv_copy is not None) is gluon
        _check(out, lse, qs, kv["ks"], kv["vs"], BF16, causal=causal, **scales)


@pytest.mark.skipif(not sm90(), reason="the Gluon prefill kernel runs on sm_90 only")
@pytest.mark.parametrize("case", HOPPER_FP8, ids=[c[0] for c in HOPPER_FP8])
def test_hopper_fp8_prefill_kernel(case, device, monkeypatch):
    """fp8 q/k/v with per-tensor scales on the Gluon kernel (P V on fp8 tensor cores, so PyTorch's
    own error is measured with P rounded to e4m3) and on the portable kernel (backend="fa2")."""
    used = spy_hopper_prefill(monkeypatch)
    _, qo_lens, _, h_qo, _, d, _, causal = case
    scales = dict(q_scale=0.5, k_scale=0.25, v_scale=2.0)
    qs = [(torch.randn(n, h_qo, d, device=device) * 4).to(E4M3) for n in qo_lens]
    kv = _fp8_kv(case, device)
    for backend in ("auto", "fa2"):
        ws = torch.empty(64 << 20, dtype=torch.uint8, device=device)
        w, out, lse = _plan_and_run_fp8_case(case, kv, qs, ws, E4M3, scales, device, backend)
        gluon = backend == "auto"
        assert used[-1] is gluon and (w.plan_value.v_t is not None) is gluon
        _check(out, lse, qs, kv["ks"], kv["vs"], F16, causal=causal, p_dtype=E4M3 if gluon else None, **scales)


def test_prepass_buffers(device, monkeypatch):
    """Where the fp8 plans' pre-pass buffers live (the Gluon kernel's planning, on any device:
    hopper_covers is forced). 16-bit q over an fp8 KV: K and V dequantized in the float workspace
    after the partial states, or no buffer (the portable kernel) when they do not fit; fp8 q/k/v:
    V^T in the plan's memory. CUDA-graph mode: the first plan fixes them to the whole workspace
    left; a later plan that needs more raises."""
    from pyflashinfer.attention import prefill as prefill_mod
    from pyflashinfer.attention.launch import prepass_len
    monkeypatch.setattr(prefill_mod, "hopper_covers", lambda *a, **k: True)
    h_qo, h_kv, d, kv_lens = 8, 2, 64, [100, 30, 7]
    i32 = dict(dtype=torch.int32, device=device)
    qo, kv = _i32(_indptr([3, 2, 1]), device), _i32(_indptr(kv_lens), device)
    need = prepass_len(sum(kv_lens), 3) * h_kv * d * 2 * 2  # K and V in bf16
    for ws_bytes, fits in ((need, True), (need - 1, False)):
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
        w.plan(qo, kv, h_qo, h_kv, d, q_data_type=BF16, kv_data_type=E4M3, disable_split_kv=True)
        kv_copy = w.plan_value.kv_copy
        assert (kv_copy is not None) == fits and w.plan_value.v_t is None
        if fits:
            kd, vd = kv_copy
            assert kd.shape == vd.shape == (prepass_len(sum(kv_lens), 3), h_kv, d) and kd.dtype == BF16
            assert kd.data_ptr() == ws.data_ptr() and vd.data_ptr() == ws.data_ptr() + need // 2
            assert f"K/V copied to {list(kd.shape)}" in repr(w.plan_value)
    w.plan(qo, kv, h_qo, h_kv, d, q_data_type=E4M3, kv_data_type=E4M3)
    assert w.plan_value.v_t.shape == (h_kv, d, prepass_len(sum(kv_lens), 3)) and w.plan_value.kv_copy is None

    ws = torch.empty(32 << 20, dtype=torch.uint8, device=device)  # the graph's partial states take ~9 MB on an H100
    g = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
        ws, use_cuda_graph=True, qo_indptr_buf=torch.empty(4, **i32), kv_indptr_buf=torch.empty(4, **i32))
    g.plan(qo, kv, h_qo, h_kv, d, q_data_type=BF16, kv_data_type=E4M3)
    first = g.plan_value.kv_copy
    part_end = g.plan_value.part_lse.data_ptr() + g.plan_value.part_lse.numel() * 4
    assert first[0].data_ptr() >= part_end and first[1].data_ptr() + first[1].numel() * 2 <= ws.data_ptr() + ws.numel()
    g.plan(qo, _i32(_indptr([900, 30, 7]), device), h_qo, h_kv, d, q_data_type=BF16, kv_data_type=E4M3)
    assert g.plan_value.kv_copy[0].data_ptr() == first[0].data_ptr()
    with pytest.raises(ValueError, match="pre-pass needs"):
        g.plan(qo, _i32(_indptr([first[0].shape[0], 30, 7]), device), h_qo, h_kv, d, q_data_type=BF16,
               kv_data_type=E4M3)


@pytest.mark.parametrize("page,copied", [(1, True), (3, True), (128, True), (16, False)])
def test_paged_kv_copy_planned(page, copied, device, monkeypatch):
    """Which 16-bit paged plans the Gluon kernel reads through a gathered copy (launch.kv_copied:
    pages it does not copy in place, at d128 any but 8-64 tokens), planned on any device
    (hopper_covers is forced): eager plans hold the copy in the float workspace; CUDA-graph plans
    hold none (they keep the portable kernel, whose KV is not bounded by the workspace)."""
    from pyflashinfer.attention import prefill as prefill_mod
    from pyflashinfer.attention.launch import prepass_len
    monkeypatch.setattr(prefill_mod, "hopper_covers", lambda *a, **k: True)
    h_qo, h_kv, d, qo_lens, kv_lens = 8, 2, 128, [3, 5], [40, 300]
    _, (indptr, indices, last), _, _, _ = random_paged_cache(kv_lens, h_kv, d, page, BF16, device)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device=device))
    w.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, page, q_data_type=BF16)
    kv_copy = w.plan_value.kv_copy
    assert (kv_copy is not None) is copied
    if copied:
        assert kv_copy[0].shape == (prepass_len(int(indptr[-1]) * page, 2), h_kv, d) and kv_copy[0].dtype == BF16
    g = _graph_wrapper(True, 2, int(indptr[-1]), device)
    g.plan(_i32(_indptr(qo_lens), device), indptr, indices, last, h_qo, h_kv, d, page, q_data_type=BF16)
    assert g.plan_value.kv_copy is None


@pytest.mark.parametrize("page,kv_dtype,qo,wide", [(0, BF16, 300, True), (16, BF16, 300, True), (1, BF16, 300, False),
                                                   (0, E4M3, 300, False), (0, BF16, 20, False)],
                         ids=["ragged", "p16", "p1-copied", "fp8-kv-copied", "few-rows"])
def test_d256_row_tiles(page, kv_dtype, qo, wide, device, monkeypatch):
    """Head dim 256 plans take 128-row tiles where the Gluon kernel covers them and reads K/V in
    place (launch.batch_prefill_tile; coverage forced, so this plans on any device); 64 where it
    reads a copy (which may not fit the workspace, leaving the plan to the portable kernel) or
    where a request has few rows."""
    from pyflashinfer.attention import launch
    monkeypatch.setattr(launch, "hopper_covers_fields", lambda *a, **k: True)
    h_qo, h_kv, d, qo_lens, kv_lens = 8, 4, 256, [qo, 1], [qo + 40, 1]
    ws = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    if page:
        _, table, _, _, _ = random_paged_cache(kv_lens, h_kv, d, page, kv_dtype, device)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
        w.plan(_i32(_indptr(qo_lens), device), *table, h_qo, h_kv, d, page, q_data_type=BF16, kv_data_type=kv_dtype)
    else:
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
        w.plan(_i32(_indptr(qo_lens), device), _i32(_indptr(kv_lens), device), h_qo, h_kv, d, q_data_type=BF16,
               kv_data_type=kv_dtype)
    assert w.plan_value.block_m == (128 if wide else 64)
