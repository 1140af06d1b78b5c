"""Tensor-core (tl.dot) attention: prefill, and decode with use_tensor_cores=True.

Rows of a tile are packed (token, head-in-group) pairs of one KV head, so a GQA group shares
every K/V tile it loads, and any group size works without a dispatch table:
    row r  ->  token r // group_size,  qo head kv_head * group_size + r % group_size.

Two ways to name the work of a program (axis 0), by BATCHED:
- single request: axis 0 is the row tile and axis 2 the KV split (kv_chunk tokens each); with
  stride_os/stride_ls != 0 each split writes its partial state to a workspace for merge.py.
- batch plan: axis 0 indexes a work list (request, row tile, kv range, partial slot) built
  on the host (plan.py); requests come from qo_indptr/seq_lens, KV through a page table
  (PAGED) or contiguous per request (kv_indptr in tokens). A split request's items write
  partial states (HAS_PARTIALS): decode plans put a chunk's tokens side by side from its slot,
  and the last of a request's chunks to finish merges them in the same launch
  (common.merge_split_request); prefill plans (PARTIALS_BY_TOKEN) put token t's chunks at
  part_indptr[t] + slot, merged by a launch of merge.py.
Axis 1 is the KV head. With DOT_F16 (fp8 KV) both products run in fp16, whatever q's dtype:
exact for the fp8 values, and p in [0, 1] keeps more bits than in bf16; q must stay within
fp16's range (|q| < 65504). An fp8 V tile is read as 16-bit pairs of columns, and p.v runs as
two products, over the even and over the odd columns (fp8_v_pairs says why). q may be fp8 too:
with FP8_QK (sm_90) q.k runs on fp8 tensor cores directly (no conversion of the K tile), p.v in
fp16. HEAD_SCALES applies per-head dequantisation scales (scale_q per qo head, scale_k and
scale_v per KV head) to the logits and the output.
"""
import triton
import triton.language as tl

from .common import (
    INTERPRETING, finalize, fold_sink, kv_bases, kv_offsets, load_rope, load_work, logits_log2, merge_split_request,
    softmax_step, store_out, tile_pages,
)


@triton.jit(do_not_specialize=["qo_len", "kv_len", "group_size", "kv_chunk", "window_left"])
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr, mask_indptr_ptr, alibi_ptr, sinks_ptr,
    scale_q_ptr, scale_k_ptr, scale_v_ptr,
    work_ptr, qo_indptr_ptr, seq_lens_ptr, kv_indptr_ptr, kv_indices_ptr, part_o_ptr, part_lse_ptr, part_indptr_ptr,
    merge_indptr_ptr, counter_ptr,
    stride_qn, stride_qh, stride_kpage, stride_kn, stride_kh, stride_vpage, stride_vn, stride_vh,
    stride_os, stride_on, stride_oh, stride_ls, stride_ln, stride_lh,
    stride_w, stride_pn, stride_ph, stride_pln, stride_plh,
    qo_len, kv_len, group_size, kv_chunk,
    sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta, v_scale,
    HEAD_DIM_QK: tl.constexpr, HEAD_DIM_VO: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DVO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, USE_ROPE: tl.constexpr,
    WRITE_LSE: tl.constexpr, BATCHED: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
    DOT_F16: tl.constexpr, HAS_PARTIALS: tl.constexpr, KV_TMA: tl.constexpr, HAS_SINKS: tl.constexpr,
    WARP_SPEC: tl.constexpr, TWO_PHASE: tl.constexpr, PARTIALS_BY_TOKEN: tl.constexpr,
    HEAD_SCALES: tl.constexpr, FP8_QK: tl.constexpr, HEADS_ADJACENT: tl.constexpr,
):
    pid_w = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_s = tl.program_id(2)  # always 0 for batch plans
    if HEADS_ADJACENT:  # consecutive programs take one work item's KV heads, which share its pages
        lin = pid_h * tl.num_programs(0) + pid_w
        pid_w = lin // tl.num_programs(1)
        pid_h = lin % tl.num_programs(1)
    if BATCHED:
        req, pid_m, lo, hi, slot = load_work(work_ptr, stride_w, pid_w)
        if req < 0:
            return
        q_start = tl.load(qo_indptr_ptr + req)
        qo_len = tl.load(qo_indptr_ptr + req + 1) - q_start
        kv_len = tl.load(seq_lens_ptr + req)
        kv_start = tl.load(kv_indptr_ptr + req)  # first page (PAGED) or first token
    else:
        pid_m = pid_w
        q_start = 0
        slot = -1  # final rows (a split's partial states go to stride_os instead)
        kv_start = tl.full([], 0, tl.int32)
        lo = pid_s * kv_chunk
        hi = tl.minimum(lo + kv_chunk, kv_len)

    num_rows = qo_len * group_size
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    tok = offs_m // group_size                      # token within the request
    head = pid_h * group_size + offs_m % group_size
    q_pos = tok + (kv_len - qo_len)                 # causal alignment: bottom-right
    tok_g = (q_start + tok).to(tl.int64)            # token within q / out

    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dvo = tl.arange(0, BLOCK_DVO)
    mask_dqk = offs_dqk < HEAD_DIM_QK
    mask_dvo = offs_dvo < HEAD_DIM_VO
    offs_n0 = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + tok_g[:, None] * stride_qn + head[:, None] * stride_qh
    mask_q = mask_m[:, None] & mask_dqk[None, :]
    if USE_ROPE:
        q = load_rope(q_rows, offs_dqk, mask_q, q_pos, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        q = q.to(q_ptr.dtype.element_ty)
    else:
        q = tl.load(q_rows + offs_dqk[None, :], mask=mask_q, other=0.0)
    if HAS_MASK:
        if BATCHED:  # each request's mask starts on a byte of its own (segment_packbits)
            mask_ptr += tl.load(mask_indptr_ptr + req).to(tl.int64)
    if DOT_F16 and not FP8_QK:  # fp8 KV: fp8 -> fp16 converts natively on sm_90, fp8 -> bf16 does not
        q = q.to(tl.float16)
    if HEAD_SCALES:  # fp8 q/k/v with per-head dequantisation scales: q's per row, k's and v's per KV head
        q_rows_scale = tl.load(scale_q_ptr + head, mask=mask_m, other=1.0).to(tl.float32)
        sm_scale = sm_scale * tl.load(scale_k_ptr + pid_h).to(tl.float32) * q_rows_scale[:, None]
        v_scale = v_scale * tl.load(scale_v_ptr + pid_h).to(tl.float32)
    if HAS_ALIBI:
        slopes = tl.load(alibi_ptr + head, mask=mask_m, other=0.0)
    else:
        slopes = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Cut the KV range to what the causal mask and the window let this row tile see.
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, num_rows) - 1
    if IS_CAUSAL:
        hi = tl.minimum(hi, last_row // group_size + (kv_len - qo_len) + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, first_row // group_size + (kv_len - qo_len) - window_left)

    k_base, v_base = kv_bases(k_ptr, v_ptr, pid_h, kv_start, stride_kh, stride_kn, stride_vh, stride_vn, PAGED)
    if PAGED:
        page_ptr = kv_indices_ptr + kv_start  # this request's page ids
    else:
        page_ptr = kv_indices_ptr
    if KV_TMA:  # contiguous KV on sm_90: tiles come through the copy engine, zero past kv_len
        k_src = tl.make_tensor_descriptor(k_base, [kv_len, HEAD_DIM_QK], [stride_kn, 1], [BLOCK_N, HEAD_DIM_QK])
        v_src = tl.make_tensor_descriptor(v_base, [kv_len, HEAD_DIM_VO], [stride_vn, 1], [BLOCK_N, HEAD_DIM_VO])
    else:
        k_src = k_base
        v_src = v_base
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # fp8 V (not through TMA): p.v runs as two products, over V's even and odd columns (fp8_v_pairs)
    V_PAIRS: tl.constexpr = (DOT_F16 and not KV_TMA and HEAD_DIM_VO % 2 == 0 and BLOCK_DVO >= 32
                             and (v_ptr.dtype.element_ty == tl.float8e4nv or v_ptr.dtype.element_ty == tl.float8e5))
    if V_PAIRS:
        acc = (tl.zeros([BLOCK_M, BLOCK_DVO // 2], dtype=tl.float32),
               tl.zeros([BLOCK_M, BLOCK_DVO // 2], dtype=tl.float32))
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_DVO], dtype=tl.float32)

    # TWO_PHASE: first the whole tiles every row of the tile sees (no mask, no bounds: most of
    # a causal prefill), then the rest with every mask applied (the diagonal, the tail, windows,
    # masks); else every tile masked. WARP_SPEC (with KV_TMA) gives the first phase's loads to
    # producer warps.
    UNMASKED_PHASE: tl.constexpr = TWO_PHASE and not (HAS_MASK or HAS_WINDOW)
    full_hi = lo
    if UNMASKED_PHASE:
        seen_by_all = hi
        if IS_CAUSAL:
            seen_by_all = tl.minimum(hi, first_row // group_size + (kv_len - qo_len) + 1)
        full_hi = lo + tl.maximum(seen_by_all - lo, 0) // BLOCK_N * BLOCK_N
    for phase in tl.static_range(2):  # 0: [lo, full_hi) unmasked, 1: [full_hi, hi) masked
        if phase == 1 or UNMASKED_PHASE:
            start = lo if phase == 0 else full_hi
            pages = tile_pages(page_ptr, start + offs_n0, hi, PAGED, PAGE_SIZE)  # one tile ahead
            for start_n in tl.range(start, full_hi if phase == 0 else hi, BLOCK_N,
                                    warp_specialize=WARP_SPEC and phase == 0):
                next_pages = tile_pages(page_ptr, start_n + BLOCK_N + offs_n0, hi, PAGED, PAGE_SIZE)
                acc, m_i, l_i = attend_tile(
                    acc, m_i, l_i, q, k_src, v_src, pages, mask_ptr, start_n, hi, offs_n0, offs_dqk, offs_dvo,
                    mask_dqk, mask_dvo, q_pos, tok, mask_m, slopes, kv_len, stride_kpage, stride_kn, stride_vpage,
                    stride_vn, sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta,
                    HEAD_DIM_QK, HEAD_DIM_VO, BLOCK_DQK, BLOCK_DVO, phase == 1, IS_CAUSAL, HAS_MASK, HAS_WINDOW,
                    HAS_SOFTCAP, HAS_ALIBI, USE_ROPE, PAGED, PAGE_SIZE, KV_TMA, DOT_F16, V_PAIRS)
                pages = next_pages
    if V_PAIRS:  # columns 2j, 2j + 1 <- even j, odd j
        acc = tl.join(acc[0], acc[1]).reshape(BLOCK_M, BLOCK_DVO)

    if HAS_SINKS:  # a split request's partial states get theirs when merged
        acc, m_i, l_i = fold_sink(acc, m_i, l_i, sinks_ptr, head, mask_m, slot < 0)
    out, lse = finalize(acc, m_i, l_i, v_scale)
    mask_o = mask_m[:, None] & mask_dvo[None, :]
    if HAS_PARTIALS:  # batch plans that split KV: slot >= 0 writes a partial state
        if slot >= 0:
            if PARTIALS_BY_TOKEN:  # prefill: token t's chunks sit at part_indptr[t] + chunk (slot)
                p_row = (tl.load(part_indptr_ptr + q_start + tok, mask=mask_m, other=0) + slot).to(tl.int64)
            else:  # decode: a chunk's tokens sit side by side from its slot
                p_row = (slot + tok).to(tl.int64)
            store_out(part_o_ptr, part_lse_ptr, out, lse, p_row, head, offs_dvo, mask_o, mask_m, 0, stride_pn,
                      stride_ph, 0, stride_pln, stride_plh, True)
            if not PARTIALS_BY_TOKEN:  # decode: the request's last chunk to finish merges (prefill: merge.py)
                row_tiles = tl.cdiv(num_rows, BLOCK_M)
                merge_split_request(
                    part_o_ptr, part_lse_ptr, o_ptr, lse_ptr, sinks_ptr, counter_ptr, merge_indptr_ptr, req,
                    (req * row_tiles + pid_m) * tl.num_programs(1) + pid_h, first_row, last_row + 1, group_size,
                    qo_len, q_start, pid_h, stride_pn, stride_ph, stride_pln, stride_plh, stride_on, stride_oh,
                    stride_ln, stride_lh, offs_dvo, mask_dvo, HAS_SINKS, WRITE_LSE)
        else:
            store_out(o_ptr, lse_ptr, out, lse, tok_g, head, offs_dvo, mask_o, mask_m, 0, stride_on, stride_oh,
                      0, stride_ln, stride_lh, WRITE_LSE)
    elif BATCHED:
        store_out(o_ptr, lse_ptr, out, lse, tok_g, head, offs_dvo, mask_o, mask_m, 0, stride_on, stride_oh,
                  0, stride_ln, stride_lh, WRITE_LSE)
    else:
        store_out(o_ptr, lse_ptr, out, lse, tok_g, head, offs_dvo, mask_o, mask_m, pid_s.to(tl.int64) * stride_os,
                  stride_on, stride_oh, pid_s.to(tl.int64) * stride_ls, stride_ln, stride_lh, WRITE_LSE)


@triton.jit
def attend_tile(acc, m_i, l_i, q, k_src, v_src, pages, mask_ptr, start_n, hi, offs_n0, offs_dqk, offs_dvo,
                mask_dqk, mask_dvo, q_pos, tok, mask_m, slopes, kv_len, stride_kpage, stride_kn, stride_vpage,
                stride_vn, sm_scale, soft_cap, window_left, rope_rcp_scale, rope_log2_theta,
                HEAD_DIM_QK: tl.constexpr, HEAD_DIM_VO: tl.constexpr, BLOCK_DQK: tl.constexpr,
                BLOCK_DVO: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
                USE_ROPE: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, KV_TMA: tl.constexpr,
                DOT_F16: tl.constexpr, V_PAIRS: tl.constexpr):
    """One KV tile [start_n, start_n + BLOCK_N) of the online softmax. MASKED=False: every key
    of the tile is in range and seen by every row (no bounds, no masks). k_src/v_src: tensor
    descriptors (KV_TMA) or the KV head's base pointers; pages: the tile's page ids (PAGED)."""
    offs_n = start_n + offs_n0
    if MASKED:
        mask_n = offs_n < hi
        mask_k = mask_n[:, None] & mask_dqk[None, :]
        mask_v = mask_n[:, None] & mask_dvo[None, :]
    else:
        mask_n = None
        mask_k = mask_dqk[None, :]
        mask_v = mask_dvo[None, :]
    if KV_TMA:
        k = k_src.load([start_n, 0])
    else:
        k_rows = k_src + kv_offsets(offs_n, pages, stride_kpage, stride_kn, PAGED, PAGE_SIZE)[:, None]
        if USE_ROPE:
            k = load_rope(k_rows, offs_dqk, mask_k, offs_n, HEAD_DIM_QK, rope_rcp_scale, rope_log2_theta)
        elif BLOCK_DQK == HEAD_DIM_QK and not MASKED:
            k = tl.load(k_rows + offs_dqk[None, :])
        else:
            k = tl.load(k_rows + offs_dqk[None, :], mask=mask_k, other=0.0)
    qk = tl.dot(q, tl.trans(k.to(q.dtype)))
    rel_pos = offs_n[None, :] - q_pos[:, None]
    s = logits_log2(qk, sm_scale, soft_cap, slopes, rel_pos, HAS_SOFTCAP, HAS_ALIBI)
    if MASKED:
        keep = mask_n[None, :] & mask_m[:, None]
        if IS_CAUSAL:
            keep &= rel_pos <= 0
        if HAS_WINDOW:
            keep &= rel_pos >= -window_left
        if HAS_MASK:
            bit = tok.to(tl.int64)[:, None] * kv_len + offs_n[None, :]
            byte = tl.load(mask_ptr + (bit >> 3), mask=keep, other=0).to(tl.int32)
            keep &= ((byte >> (bit & 7).to(tl.int32)) & 1) != 0
        s = tl.where(keep, s, float("-inf"))
        m_new, l_i, alpha, p = softmax_step(m_i, l_i, s)
    else:  # every logit is finite: no guard for rows that have seen nothing yet
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
    if not KV_TMA:
        v_rows = v_src + kv_offsets(offs_n, pages, stride_vpage, stride_vn, PAGED, PAGE_SIZE)[:, None]
    if V_PAIRS:
        v_rows = v_rows.to(tl.pointer_type(tl.uint16))  # V's columns by pairs
        offs_vp = tl.arange(0, BLOCK_DVO // 2)
        if BLOCK_DVO == HEAD_DIM_VO and not MASKED:
            v = tl.load(v_rows + offs_vp[None, :])
        else:
            mask_vp = (offs_vp < HEAD_DIM_VO // 2)[None, :]
            if MASKED:
                mask_vp = mask_n[:, None] & mask_vp
            v = tl.load(v_rows + offs_vp[None, :], mask=mask_vp, other=0)
        v_even, v_odd = fp8_v_pairs(v, v_src.dtype.element_ty == tl.float8e4nv)
        p16 = p.to(tl.float16)
        acc_even = tl.dot(p16, v_even, acc[0] * alpha[:, None])
        acc_odd = tl.dot(p16, v_odd, acc[1] * alpha[:, None])
        acc = (acc_even, acc_odd)
    else:
        if KV_TMA:
            v = v_src.load([start_n, 0])
        elif BLOCK_DVO == HEAD_DIM_VO and not MASKED:
            v = tl.load(v_rows + offs_dvo[None, :])
        else:
            v = tl.load(v_rows + offs_dvo[None, :], mask=mask_v, other=0.0)
        pv_dtype: tl.constexpr = tl.float16 if DOT_F16 else q.dtype
        acc = tl.dot(p.to(pv_dtype), v.to(pv_dtype), acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def fp8_v_pairs(v, E4M3: tl.constexpr):
    """uint16 pairs of fp8 values (low byte: an even column of V, high byte: the odd one after it)
    -> fp16 tiles of the even and of the odd columns, exact (NaN stays NaN).

    V reaches the p.v product as a 16-bit tile, so its dot-operand load from shared memory is
    ldmatrix.trans: an fp8 tile there (Triton moves the fp8 -> fp16 cast past the layout change
    to the dot operand) takes one byte load per element, 8-bit data having no transposing
    ldmatrix. Each step below acts on each element alone, so that layout change moves up to the
    load. On the GPU one instruction makes two fp16 values: a byte permute (e5m2 is fp16's top
    byte) or a permute then the fp8x2 -> fp16x2 convert (e4m3), where Triton's integer ops
    would unpack and repack every 16-bit half."""
    if INTERPRETING:  # no inline assembly here, and the interpreter's fp8 casts lose subnormals and NaN
        even = fp8_bits_to_f16(v & 0xFF, E4M3)
        odd = fp8_bits_to_f16(v >> 8, E4M3)
    elif E4M3:  # bytes 0, 2 (even) or 1, 3 (odd) of two pairs -> one fp8x2 -> fp16x2
        even = tl.inline_asm_elementwise(
            "{ .reg .b32 t; .reg .b16 lo, hi; prmt.b32 t, $1, 0, 0x0020; mov.b32 {lo, hi}, t; "
            "cvt.rn.f16x2.e4m3x2 $0, lo; }", "=r,r", [v], dtype=tl.float16, is_pure=True, pack=2)
        odd = tl.inline_asm_elementwise(
            "{ .reg .b32 t; .reg .b16 lo, hi; prmt.b32 t, $1, 0, 0x0031; mov.b32 {lo, hi}, t; "
            "cvt.rn.f16x2.e4m3x2 $0, lo; }", "=r,r", [v], dtype=tl.float16, is_pure=True, pack=2)
    else:  # e5m2 byte b -> fp16 bits b << 8: bytes (0, 2) or (1, 3) into the high byte of each half
        even = tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, 0x2404;", "=r,r", [v], dtype=tl.float16,
                                         is_pure=True, pack=2)
        odd = tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, 0x3414;", "=r,r", [v], dtype=tl.float16,
                                        is_pure=True, pack=2)
    return even, odd


@triton.jit
def fp8_bits_to_f16(b, E4M3: tl.constexpr):
    """fp8 codes (uint16, 0..255) -> fp16 values by integer steps, exact (the interpreter's
    path of fp8_v_pairs)."""
    if E4M3:  # s eeee mmm -> s 0eeee mmm0000000 is the value times 2^-8 (bias 7 -> 15)
        h = (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.float16, bitcast=True)
        return tl.where((b & 0x7F) == 0x7F, float("nan"), h.to(tl.float32) * 256.0).to(tl.float16)
    else:  # s eeeee mm: fp16's top byte
        return (b << 8).to(tl.float16, bitcast=True)
