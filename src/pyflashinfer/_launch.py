"""One place where every Triton kernel of the package is launched.

Launching through `launch` lets the CPU test run record each distinct kernel variant it used
(set PYFLASHINFER_RECORD_VARIANTS=<dir>); `tools/aot_check.py` then compiles every recorded
variant for sm_90 with `triton.compile`, which catches what the interpreter lets through.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import uuid
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime import _allocation

_RECORD_DIR = os.environ.get("PYFLASHINFER_RECORD_VARIANTS")
_seen: set = set()
_record_file = None


def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return ann is tl.constexpr or (isinstance(ann, str) and ann.endswith("constexpr"))


def _record(kernel, kwargs: dict, num_warps: int, num_stages: int, maxnreg: Optional[int]) -> None:
    """Record the variant as the GPU would specialise it: Triton's own rules (an int equal to 1
    becomes a constant; pointers and ints that are multiples of 16 are marked "D", divisible),
    except for the kernel's do_not_specialize arguments."""
    global _record_file
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    fn = getattr(kernel, "fn", kernel)
    jit_kwargs = getattr(kernel, "kwargs", None) or {}
    fixed = set(jit_kwargs.get("do_not_specialize") or getattr(kernel, "do_not_specialize", None) or [])
    sig, consts, attrs = {}, {}, {}
    for name, param in inspect.signature(fn).parameters.items():
        value = kwargs.get(name, param.default)
        if _is_constexpr(param) or value is None:
            sig[name] = "constexpr"
            consts[name] = value
            continue
        kind, spec = native_specialize_impl(BaseBackend, value, False, name not in fixed, True)
        if kind == "constexpr":
            sig[name] = "constexpr"
            consts[name] = spec
        else:
            sig[name] = kind
            if spec == "D":
                attrs[name] = "D"
    entry = {"module": fn.__module__, "name": fn.__name__, "signature": sig, "constexprs": consts,
             "attrs": attrs, "num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        entry["maxnreg"] = maxnreg
    key = json.dumps(entry, sort_keys=True)
    if key in _seen:
        return
    _seen.add(key)
    if _record_file is None:
        os.makedirs(_RECORD_DIR, exist_ok=True)
        _record_file = open(os.path.join(_RECORD_DIR, f"variants-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"), "a")
    _record_file.write(key + "\n")
    _record_file.flush()


_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
if _INTERPRETING:  # the interpreter computes bf16 and fp8 wrongly unless fixed (_interpreter.py)
    from . import _interpreter

    _interpreter.apply()


def _scratch(size: int, alignment: int, stream):
    """Global scratch for kernels that build tensor descriptors on the device."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


_compiled: dict = {}
# The launch stream of a device (a function, so that a test can stand in for it).
_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _fast_key(kernel, device: int, kwargs: dict, options: dict):
    """Triton's own binder gives the specialisation (dtypes, 16-byte alignment, ints equal to 1
    or divisible by 16, constexpr values); with the launch options it names a compiled kernel."""
    caches = kernel.device_caches.get(device)
    if caches is None:
        return None, None
    bound_args, specialization, _ = caches[4](**kwargs, **options)
    opts = tuple(sorted(options.items()))
    try:
        key = (id(kernel), device, opts, tuple(specialization))
        hash(key)
    except TypeError:
        key = (id(kernel), device, opts, str(specialization))
    return key, bound_args


def _direct(compiled):
    """The C launcher under Triton's Python one (`CudaLauncher`), with how to expand tensor
    descriptor arguments for it, where the kernel needs no scratch: (launcher, prefix of its
    arguments, {argument index: expand}), or None where this Triton's launcher is laid out
    otherwise. Triton's wrapper expands every descriptor on every call, in a Python loop over
    all the arguments (about 10 us a launch for the Gluon prefill kernel); a Replay expands a
    descriptor when it changes and hands the C launcher a ready list."""
    run = getattr(compiled, "run", None)
    launcher = getattr(run, "launch", None)
    if launcher is None or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None
    expand = {}
    code = getattr(launcher, "__code__", None)
    if code is not None:  # wrap_handle_tensordesc's `inner`: unwrap it
        cells = dict(zip(code.co_freevars, launcher.__closure__ or ()))
        make = launcher.__globals__.get("make_tensordesc_arg")
        if not {"launcher", "tensordesc_indices", "tensordesc_meta"} <= cells.keys() or make is None:
            return None
        indices, meta = cells["tensordesc_indices"].cell_contents, cells["tensordesc_meta"].cell_contents
        expand = {i: functools.partial(make, metadata=m) for i, m in zip(sorted(indices), meta)}
        launcher = cells["launcher"].cell_contents
    try:
        prefix = (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                  compiled.packed_metadata, None, None, None)
    except AttributeError:
        return None
    return launcher, prefix, expand


class Replay:
    """A launch made once through `launch`, kept to be made again with other tensors of the
    same dtypes and 16-byte alignment in the named pointer arguments; every other argument
    stays as it was. Calling it skips argument binding: one C call to the compiled launcher
    (`_direct`), or through Triton's Python launcher where that cannot be unwrapped.

    A tensor-descriptor argument passed again as the same object keeps its expansion."""

    __slots__ = ("compiled", "args", "index", "grid", "device", "direct", "prefix", "expand", "last")

    def __init__(self, compiled, args: list, names: list, grid, device: int):
        self.compiled, self.device = compiled, device
        self.grid = (tuple(grid) + (1, 1))[:3]
        direct = _direct(compiled)
        self.direct, self.prefix, self.expand, self.last = None, (), {}, {}
        if direct is None:
            self.args, self.index = args, {n: i for i, n in enumerate(names)}
            return
        self.direct, self.prefix, expand = direct
        # The C launcher's flat arguments; a descriptor fills a slice of them: index -> (start, stop).
        self.args, self.index = [], {}
        for i, (name, a) in enumerate(zip(names, args)):
            start = len(self.args)
            if i in expand:
                self.args.extend(expand[i](a))
                self.index[name] = (start, len(self.args))
                self.expand[name] = expand[i]
                self.last[name] = a
            else:
                self.args.append(a)
                self.index[name] = start

    def __call__(self, **tensors) -> None:
        args, index = self.args, self.index
        if self.direct is None:
            for name, t in tensors.items():
                args[index[name]] = t
            c = self.compiled
            c.run(*self.grid, _stream(self.device), c.function, c.packed_metadata,
                  None, None, None, *args)
            return
        for name, t in tensors.items():
            at = index[name]
            if type(at) is int:
                args[at] = t
            elif self.last[name] is not t:
                args[at[0]:at[1]] = self.expand[name](t)
                self.last[name] = t
        self.direct(*self.grid, _stream(self.device), *self.prefix, *args)


def _check_names(kernel, kwargs: dict) -> None:
    """The interpreter ignores keyword arguments a kernel does not take; the GPU launcher
    rejects them. Reject them here too."""
    fn = getattr(kernel, "fn", kernel)
    unknown = sorted(set(kwargs) - set(inspect.signature(fn).parameters))
    if unknown:
        raise TypeError(f"{fn.__name__}: unexpected arguments {unknown}")


def launch(kernel, grid, *, num_warps: int = 4, num_stages: int = 2, maxnreg: Optional[int] = None,
           **kwargs) -> Optional[Replay]:
    """kernel[grid](**kwargs) with launch options (maxnreg: a cap on registers per thread, so
    that more programs fit on an SM); records the variant when asked to.

    On the GPU, a variant launched before goes straight to its compiled launcher: Triton's
    `JITFunction.run` costs tens of microseconds of host time per call (cache key strings,
    hooks, option parsing), which decode at batch 1 cannot afford. Returns a `Replay` of this
    launch on the GPU (None under the interpreter)."""
    if _RECORD_DIR:
        _record(kernel, kwargs, num_warps, num_stages, maxnreg)
    options = dict(num_warps=num_warps, num_stages=num_stages)
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    if _INTERPRETING:
        _check_names(kernel, kwargs)
        _interpreter.check_dtypes(kernel, kwargs)
        kernel[grid](**kwargs, **options)
        return None
    device = torch.cuda.current_device()
    if _allocation._allocator.get() is _allocation._NULL_ALLOCATOR:  # the user's allocator wins
        triton.set_allocator(_scratch)
    key, bound_args = _fast_key(kernel, device, kwargs, options)
    compiled = _compiled.get(key) if key is not None else None
    if compiled is None:
        compiled = kernel[grid](**kwargs, **options)
        if key is None:
            key, bound_args = _fast_key(kernel, device, kwargs, options)
        if key is None or not hasattr(compiled, "packed_metadata"):
            return None
        _compiled[key] = compiled
        return Replay(compiled, list(bound_args.values()), list(bound_args.keys()), grid, device)
    replay = Replay(compiled, list(bound_args.values()), list(bound_args.keys()), grid, device)
    replay()
    return replay


def replay_key(*args) -> Optional[tuple]:
    """A cheap key of what an op's launch depends on: per tensor its dtype, shape, strides, device
    and 16-byte alignment (what Triton specialises on); dicts by their items; other values as
    they are. None (remember nothing) under the interpreter and while torch.compile traces."""
    if _INTERPRETING or torch.compiler.is_compiling():
        return None
    return tuple([_key_of(a) for a in args])


def _key_of(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.shape, a.stride(), a.device, a.data_ptr() % 16 == 0
    if isinstance(a, dict):
        return tuple(sorted((k, _key_of(v)) for k, v in a.items()))
    return a


class ReplayCache:
    """An op's launches, remembered by `replay_key` of its arguments. A call whose key was seen
    before had its arguments checked then: it skips the op's checks and Triton's argument
    binding and replays the launch with its own tensors (Replay)."""

    def __init__(self, max_entries: int = 256):
        self._replays: dict = {}
        self._max = max_entries

    def get(self, key: Optional[tuple]):
        return None if key is None else self._replays.get(key)

    def put(self, key: Optional[tuple], replay) -> None:  # a Replay, or an op's list of them
        if key is None or replay is None:
            return
        if len(self._replays) >= self._max:
            self._replays.clear()
        self._replays[key] = replay


def launcher_op(name: str, impl, mutates: tuple):
    """A launcher (keyword arguments; returns its Replays) as the `torch.library` custom op
    pyflashinfer::name, with the launcher's signature as schema, nothing returned and a fake
    implementation, so that torch.compile can trace calls to it. Returns what callers use:
    the op while torch.compile traces (returning None), else the launcher itself, whose
    Replays stay eager."""
    def op_impl(*args, **kwargs) -> None:
        impl(*args, **kwargs)

    op_impl.__signature__ = inspect.signature(impl, eval_str=True).replace(return_annotation=None)
    op = torch.library.custom_op(f"pyflashinfer::{name}", mutates_args=mutates)(op_impl)

    @op.register_fake
    def _(*args, **kwargs) -> None:
        return None

    def call(**kwargs):
        if torch.compiler.is_compiling():
            getattr(torch.ops.pyflashinfer, name)(**kwargs)
            return None
        return impl(**kwargs)
    return call


def aligned16(*tensors) -> bool:
    """Every tensor's data pointer is 16-byte aligned (None entries are skipped)."""
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def cdiv(a: int, b: int) -> int:
    return triton.cdiv(a, b)


_POISON = os.environ.get("PYFLASHINFER_POISON_OUTPUTS", "0") == "1"


def empty_output(*shape, dtype, device):
    """torch.empty for a kernel's output; NaN-filled when PYFLASHINFER_POISON_OUTPUTS=1 (the
    tests set it) so that an element the kernel forgot to write fails loudly."""
    if _POISON:
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
