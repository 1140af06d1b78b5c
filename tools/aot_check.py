"""Compile, for sm_90 and with no GPU, every kernel variant the CPU test run launched.

The interpreter accepts code that the GPU compiler rejects (`break`, tiny dots, shared-memory
overflow); this closes that gap. The Gluon Hopper prefill kernel, which the interpreter cannot
run, is compiled for the variants the batch prefill launches (gluon_variants). Variants carry Triton's specialisation as the GPU launch would
make it (16-byte divisibility of pointers and ints, ints equal to 1 as constants), so software
pipelining, and the shared memory it takes, are those of the GPU build. The CPU run launches the attention kernels with the
interpreter's small tiles, so each of their variants is also compiled with the tile the GPU
would pick for it (its "GPU twin"). Paged tensor-core attention variants must also get
num_stages - 1 shared-memory buffers for their K/V tiles (software-pipelined loads).
Usage: python tools/aot_check.py DIR  (DIR holds the variants-*.jsonl files written when
PYFLASHINFER_RECORD_VARIANTS=DIR). Exits 1 on any failure.
With --regs it also runs ptxas -v on each variant's PTX and lists registers per thread and
spilled bytes of the variants that spill (slower; a guide for tuning, never a failure).
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on an H100 (227 KiB)


def _ptxas_usage(ptx: str) -> tuple[str, int | None]:
    """("R registers, S B spilled", S) of sm_90a PTX, from ptxas -v (the ptxas Triton ships);
    S is None when ptxas did not say."""
    import re
    import subprocess

    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", os.path.join(d, "k.ptx"), "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    spilled = int(spill.group(1)) if spill else None
    return f"{regs.group(1) if regs else '?'} registers, {'?' if spilled is None else spilled} B spilled", spilled


def _kv_buffers_error(entry: dict, ttgir: str) -> str:
    """A paged tensor-core attention variant whose K/V tiles got fewer than num_stages - 1
    shared-memory buffers: a load of its KV loop depends on another load of the same iteration
    (the page ids; kernels/common.py tile_pages reads them a tile ahead), so Triton's pipeliner
    cannot keep later tiles' copies in flight. Correct, but latency-bound on the GPU."""
    import re

    c = entry["constexprs"]
    if entry["name"] != "attention_fwd_kernel" or not c.get("PAGED") or entry["num_stages"] < 2:
        return ""
    tiles = {(c["BLOCK_N"], c["BLOCK_DQK"]), (c["BLOCK_N"], c["BLOCK_DVO"])}
    bufs = [int(n) for n, rows, cols in re.findall(r"local_alloc : \(\) -> !ttg.memdesc<(\d+)x(\d+)x(\d+)x", ttgir)
            if (int(rows), int(cols)) in tiles]
    want = entry["num_stages"] - 1
    if bufs and min(bufs) >= want:
        return ""
    return (f"its K/V tiles get {min(bufs) if bufs else 0} shared-memory buffer(s), fewer than num_stages - 1 = "
            f"{want}: a load in the KV loop depends on another load of the same iteration")


def _compile(entry: dict, regs: bool = False) -> tuple[str, str, str]:
    """(label, error or "", with regs: the ptxas usage of a variant that spills (or may), else "")."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.experimental.gluon._runtime import GluonASTSource

    kernel = getattr(importlib.import_module(entry["module"]), entry["name"])
    label = f"{entry['name']}{sorted((k, v) for k, v in entry['constexprs'].items() if v is not None)}"
    try:
        names = kernel.arg_names  # attrs are keyed by position in the kernel's parameters
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, d in entry.get("attrs", {}).items() if d == "D"}
        source = GluonASTSource if entry.get("gluon") else ASTSource
        src = source(fn=kernel, signature=entry["signature"], constexprs=entry["constexprs"], attrs=attrs)
        options = {"num_warps": entry["num_warps"], "num_stages": entry["num_stages"]}
        if entry.get("maxnreg") is not None:
            options["maxnreg"] = entry["maxnreg"]
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        usage = ""
        if regs:
            text, spilled = _ptxas_usage(ck.asm["ptx"])
            tile = "GPU tile" if entry.get("twin") else "as recorded"
            usage = "" if spilled == 0 else f"{tile}, {entry['num_warps']} warps, {entry['num_stages']} stages: {text}"
        if ck.metadata.shared > SMEM_LIMIT:
            return label, f"uses {ck.metadata.shared} B of shared memory, over the {SMEM_LIMIT} B limit", usage
        return label, _kv_buffers_error(entry, ck.asm["ttgir"]), usage
    except Exception as e:  # report every failing variant, not just the first
        chain, c = [], e  # the root cause sits at the end of the __cause__ chain
        while c is not None:
            chain.append(f"{type(c).__name__}: {str(c).strip()[-800:]}")
            c = c.__cause__
        return label, "\n".join(chain[-2:]), ""


def gpu_twin(entry: dict) -> dict | None:
    """The variant as the GPU would launch it: the attention kernels' tiles are chosen per
    device (pyflashinfer.attention.launch / decode); other kernels' launches do not change."""
    c = entry["constexprs"]
    maxnreg = None
    if entry["name"] == "attention_fwd_kernel":
        if c["BATCHED"] and c["PAGED"] and not c["PARTIALS_BY_TOKEN"]:  # tensor-core batch decode (decode.py)
            from pyflashinfer.attention.decode import tc_decode_tile
            fp8 = "fp8" in entry["signature"]["k_ptr"]
            cfg = tc_decode_tile(1 if fp8 else 2, max(c["BLOCK_DQK"], c["BLOCK_DVO"]))
            tile = dict(BLOCK_N=cfg["block_n"], TWO_PHASE=cfg["two_phase"]), cfg["num_warps"], cfg["num_stages"]
            maxnreg = cfg.get("maxnreg")
        else:  # a recorded BLOCK_M of the interpreter's cap (64) may stand for more rows on the GPU
            from pyflashinfer.attention.launch import prefill_tile
            rows = 1 << 20 if c["BLOCK_M"] >= 64 else c["BLOCK_M"]
            t = prefill_tile(max(c["BLOCK_DQK"], c["BLOCK_DVO"]), rows, c["USE_ROPE"], c["HAS_MASK"], gpu=True)
            tile = dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n), t.num_warps, t.num_stages
    elif entry["name"] == "decode_fwd_kernel":
        from pyflashinfer.attention.launch import decode_tile
        t = decode_tile(c["BLOCK_G"], max(c["BLOCK_DQK"], c["BLOCK_DVO"]), gpu=True)
        tile = dict(BLOCK_N=t.block_n), t.num_warps, t.num_stages
    else:
        return None
    consts, num_warps, num_stages = tile
    twin = {**entry, "constexprs": {**c, **consts}, "num_warps": num_warps, "num_stages": num_stages, "twin": True}
    twin.pop("maxnreg", None)
    if maxnreg is not None:
        twin["maxnreg"] = maxnreg
    return twin


def _desc_type(dtype: str, page_size: int, d: int, block_n: int) -> str:
    """The signature type of the Gluon kernel's host-side K/V descriptor (batch_launch._kv_desc):
    Triton's own specialisation of one built over a CPU tensor."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    from pyflashinfer.attention import batch_launch
    t = torch.empty(block_n, d, dtype={"bf16": torch.bfloat16, "fp16": torch.float16,
                                       "fp8e4nv": torch.float8_e4m3fn}[dtype])
    desc, _, _ = batch_launch._kv_desc(t, (0, d, d), page_size, 1, block_n)
    return native_specialize_impl(BaseBackend, desc, False, True, True)[0]


def gluon_variants() -> list[dict]:
    """The Gluon Hopper prefill kernel never runs under the interpreter, so no test run records
    it: compile the variants the batch prefill launches on sm_90 (head dim x row tile x causal,
    with and without LSE and split-KV partial states, bf16; fp16; paged with pages of 16 and 64;
    fp8 e4m3, ragged and paged; 16-bit q over a copied KV (fp8 dequantized, pages of 1 gathered);
    with a window (w), a soft cap (c), sinks (s) and a custom mask (m); the short tile
    (launch.SHORT_TILE: t), persistent (p))."""
    import itertools

    from pyflashinfer.attention import batch_launch, launch
    from pyflashinfer.attention.kernels.prefill_hopper import prefill_ws_kernel as kernel
    out = []
    for d, block_m, causal, extra, dtype, page, feats in itertools.chain(
            itertools.product((64, 128), (64, 128), (False, True), (False, True), ("bf16",), (0,), ("",)),
            [(128, 128, True, False, "fp16", 0, ""), (128, 128, True, False, "bf16", 16, ""),
             (64, 64, False, True, "bf16", 64, "")],
            [(128, 128, True, False, "fp8e4nv", 0, ""), (128, 128, True, True, "fp8e4nv", 16, ""),
             (64, 64, False, True, "fp8e4nv", 0, ""), (64, 128, False, False, "fp8e4nv", 64, "")],
            [(128, 128, True, True, "bf16", "cp16", ""), (64, 64, False, False, "fp16", "cp0", ""),
             (128, 128, True, False, "bf16", "cp1", "")],
            [(128, 128, True, True, "bf16", 0, "wcs"), (128, 128, True, False, "bf16", 16, "w"),
             (64, 64, False, True, "fp16", 0, "cs"), (128, 128, True, True, "fp8e4nv", 16, "wc")],
            [(128, 128, False, True, "bf16", 0, "m"), (64, 64, False, False, "fp16", 16, "mw"),
             (128, 128, False, True, "fp8e4nv", 16, "m"), (128, 128, False, False, "bf16", "cp1", "mcs"),
             (256, 128, False, True, "bf16", 0, "m")],
            [(256, 128, True, True, "bf16", 0, "wcs"), (256, 128, False, False, "fp16", 16, ""),
             (256, 64, True, True, "bf16", 0, ""), (256, 64, True, False, "bf16", "cp16", "")],
            [(128, 64, True, True, "bf16", 0, "tp"), (128, 64, True, False, "fp16", 16, "t"),
             (128, 64, False, True, "bf16", "cp1", "tpwcsm"), (128, 64, False, False, "bf16", 16, "tpm")],
            [(128, 128, True, True, "bf16", 0, "p"), (128, 128, False, False, "fp16", 16, "p"),
             (64, 128, True, False, "bf16", "cp1", "pwc"), (128, 64, False, True, "bf16", 0, "p")]):
        sig, consts = {n: "i32" for n in kernel.arg_names}, {}
        if "s" in feats:
            sig["sinks_ptr"] = "*fp32"
        else:
            sig["sinks_ptr"], consts["sinks_ptr"] = "constexpr", None
        if "m" in feats:
            sig["mask_ptr"], sig["mask_indptr_ptr"] = "*u8", "*i64"
        else:
            sig["mask_ptr"], sig["mask_indptr_ptr"], consts["mask_ptr"], consts["mask_indptr_ptr"] = \
                "constexpr", "constexpr", None, None
        # "cpN": 16-bit q over a KV of pages of N tokens (0: ragged) read from a pre-pass copy
        copy_page, page = (int(page[2:]), 0) if isinstance(page, str) else (-1, page)
        if page:
            sig["kv_indices_ptr"] = "*i32"
        else:
            sig["kv_indices_ptr"], consts["kv_indices_ptr"] = "constexpr", None
        fp8 = dtype.startswith("fp8")
        if fp8:
            sig["vt_ptr"] = f"*{dtype}"
        else:
            sig["vt_ptr"], consts["vt_ptr"] = "constexpr", None
        short = launch.SHORT_TILE if "t" in feats else None
        block_n = short.block_n if short else batch_launch.HOPPER_BLOCK_N[d]
        desc = _desc_type(dtype, page, d, block_n)
        sig.update(q_ptr=f"*{dtype}", k_desc=desc, v_desc=desc, o_ptr="*fp16" if fp8 else f"*{dtype}",
                   qk_scale="fp32", v_scale="fp32", softcap_in="fp32")
        if fp8:  # P V reads V^T through a descriptor built on the device
            sig["v_desc"], consts["v_desc"] = "constexpr", None
        sig.update({n: "*i32" for n in ("work_ptr", "qo_indptr_ptr", "seq_lens_ptr", "kv_indptr_ptr")})
        optional = {"lse_ptr": "*fp32", "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "part_indptr_ptr": "*i32"}
        for n, t in optional.items():
            sig[n] = t if extra else "constexpr"
            if not extra:
                consts[n] = None
        consts.update(HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n,
                      STAGES=batch_launch.HOPPER_STAGES[1 if fp8 else 2], IS_CAUSAL=causal,
                      WRITE_LSE=extra, HAS_PARTIALS=extra, CONSUMER_REGS=batch_launch.HOPPER_CONSUMER_REGS,
                      PAGE_SIZE=page, COPY_PAGE=copy_page, HAS_WINDOW="w" in feats, HAS_SOFTCAP="c" in feats,
                      HAS_SINKS="s" in feats, HAS_MASK="m" in feats, PERSISTENT="p" in feats)
        sig.update({n: "constexpr" for n in consts})
        out.append({"module": kernel.fn.__module__, "name": "prefill_ws_kernel", "signature": sig,
                    "constexprs": consts, "attrs": {n: "D" for n, t in sig.items() if t.startswith("*")},
                    "num_warps": 4, "num_stages": 2, "gluon": True, "maxnreg": short and short.maxnreg})
    return out


def main(directory: str, regs: bool = False) -> int:
    entries = {}
    for path in glob.glob(os.path.join(directory, "variants-*.jsonl")):
        with open(path) as f:
            for line in f:
                e = json.loads(line)
                for variant in (e, gpu_twin(e)):
                    if variant is not None:
                        entries[json.dumps(variant, sort_keys=True)] = variant
    if not entries:
        print(f"aot_check: no recorded variants under {directory}; did the tests run?")
        return 1
    for variant in gluon_variants():
        entries[json.dumps(variant, sort_keys=True)] = variant
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="pyfi-aot-"))
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_compile, entries.values(), [regs] * len(entries)))
    failed = [(label, err) for label, err, _ in results if err]
    for label, err in failed:
        print(f"FAILED {label}: {err}")
    spilling = [(label, usage) for label, _, usage in results if usage]
    for label, usage in spilling:
        print(f"spills: {usage}: {label}")
    if regs:
        print(f"aot_check --regs: {len(spilling)} of {len(results)} variants spill registers")
    print(f"aot_check: {len(results) - len(failed)} passed, {len(failed)} failed "
          f"(sm_90, {len(results)} variants, {time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--regs"]
    sys.exit(main(args[0] if args else ".aot_variants", regs="--regs" in sys.argv[1:]))
