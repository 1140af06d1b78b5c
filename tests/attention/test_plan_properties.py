"""Properties of the host planners (plan.py), fuzzed: every (request, row tile) sees each of its
KV tokens exactly once, padding is marked, and partial rows are where the merge looks for them."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflashinfer.attention.plan import WORK_FIELDS, buffer_len, build_decode_buffer, build_prefill_buffer, section

lens = st.lists(st.integers(0, 300), min_size=1, max_size=6)


def _indptr(values):
    out = torch.zeros(len(values) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.tensor(values, dtype=torch.int32), 0)
    return out


def _work(buf, max_work):
    return buf[: WORK_FIELDS * max_work].view(WORK_FIELDS, max_work)


@settings(max_examples=60, deadline=None)
@given(qo=lens, kv_extra=lens, group=st.integers(1, 8), block_m=st.sampled_from([16, 64, 128]),
       chunk=st.sampled_from([64, 128, 1000]), causal=st.booleans(), pad=st.integers(0, 5),
       window=st.sampled_from([-1, 0, 5, 64, 200]))
def test_prefill_plan_covers_each_tile_once(qo, kv_extra, group, block_m, chunk, causal, pad, window):
    """With a sliding window, each tile's range starts at a multiple of the KV tile (64) no later
    than the first key any of the request's rows sees."""
    b = min(len(qo), len(kv_extra))
    qo_lens, kv_lens = qo[:b], [q + e for q, e in zip(qo[:b], kv_extra[:b])]
    seq = torch.tensor(kv_lens, dtype=torch.int32)
    total_qo = sum(qo_lens)
    buf, max_work, num_partials = build_prefill_buffer(_indptr(qo_lens), _indptr(kv_lens), seq, group, block_m,
                                                       causal, chunk, pin=False, window_left=window, kv_align=64)
    work = _work(buf, max_work)
    tiles = [(q * group + block_m - 1) // block_m for q in qo_lens]
    seen = {}
    for w in range(max_work):
        req, m, lo, hi, slot = (int(x) for x in work[:, w])
        if req < 0:
            continue
        seen.setdefault((req, m), []).append((lo, hi, slot))
    assert set(seen) == {(r, m) for r in range(b) for m in range(tiles[r])}
    part_indptr = buf[buffer_len(b, max_work):]
    assert part_indptr.numel() == total_qo + 1 and int(part_indptr[-1]) == num_partials
    q_start = 0
    for r in range(b):
        for m in range(tiles[r]):
            ranges = sorted(seen[(r, m)])
            first = max(kv_lens[r] - qo_lens[r] - window, 0) if window >= 0 else 0
            assert ranges[0][0] % 64 == 0 and first - 64 < ranges[0][0] <= first and ranges[-1][1] == kv_lens[r]
            assert all(a[1] == c[0] for a, c in zip(ranges, ranges[1:])), ranges  # contiguous, no overlap
            split = len(ranges) > 1
            assert all((slot >= 0) == split for _, _, slot in ranges)
            assert sorted(slot for *_, slot in ranges) == (list(range(len(ranges))) if split else [-1])
        counts = part_indptr[q_start + 1: q_start + qo_lens[r] + 1] - part_indptr[q_start: q_start + qo_lens[r]]
        chunks = len(seen[(r, 0)]) if tiles[r] else 1
        assert torch.all(counts == (chunks if chunks > 1 else 0))
        q_start += qo_lens[r]
    # heaviest first: the keys a work item visits never increase along the list
    keys = []
    for w in range(max_work):
        req, m, lo, hi, _ = (int(x) for x in work[:, w])
        if req >= 0:
            end = hi
            if causal:
                last_row = min((m + 1) * block_m, qo_lens[req] * group) - 1
                end = min(hi, max(last_row // group + kv_lens[req] - qo_lens[req] + 1, 0))
            if window >= 0:
                lo = max(lo, m * block_m // group + kv_lens[req] - qo_lens[req] - window)
            keys.append(max(end - lo, 0))
    assert keys == sorted(keys, reverse=True)


@settings(max_examples=60, deadline=None)
@given(kv=lens, chunk=st.sampled_from([16, 64, 256]), n=st.integers(1, 4), row_tiles=st.integers(1, 3),
       spare=st.integers(0, 4), window=st.sampled_from([-1, 0, 7, 100, 1000]))
def test_decode_plan_covers_each_request_once(kv, chunk, n, row_tiles, spare, window):
    """Each request's KV from its window's first tile (all of it without a window) to its end,
    once per row tile, in chunks; split requests own consecutive partial slots."""
    seq = torch.tensor(kv, dtype=torch.int32)
    b = len(kv)
    first = [max(x - n - window, 0) // 16 * 16 if window >= 0 else 0 for x in kv]
    needed = sum(max(1, (x - f + chunk - 1) // chunk) for x, f in zip(kv, first)) * row_tiles
    buf, num_work, num_partials = build_decode_buffer(seq, _indptr(kv), chunk, needed + spare, pin=False,
                                                      q_len_per_req=n, row_tiles=row_tiles, window_left=window,
                                                      kv_align=16)
    assert num_work == needed
    work = _work(buf, needed + spare)
    assert torch.all(work[0, num_work:] == -1)  # CUDA-graph padding
    start, length = section(b, needed + spare, 1)
    merge_indptr = buf[start: start + length]
    slots = []
    for r in range(b):
        items = [tuple(int(x) for x in work[:, w]) for w in range(num_work) if int(work[0, w]) == r]
        for m in range(row_tiles):
            ranges = sorted((lo, hi, slot) for req, mt, lo, hi, slot in items if mt == m)
            assert ranges[0][0] == first[r] and ranges[-1][1] == kv[r]
            assert all(a[1] == c[0] for a, c in zip(ranges, ranges[1:]))
        chunks = len(items) // row_tiles
        assert int(merge_indptr[r + 1] - merge_indptr[r]) == (chunks if chunks > 1 else 0)
        slots += [slot for *_, slot in items if slot >= 0]
    assert sorted(set(slots)) == [n * k for k in range(num_partials // n)]
