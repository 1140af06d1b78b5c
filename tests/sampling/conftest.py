"""Sampling tests: a speed-up of Triton's CPU interpreter, applied only while these tests run.

Why: the interpreter re-patches `triton.language` on every call of a @triton.jit helper
(tl.sum, tl.max, tl.cumsum, tl.philox, ... are such helpers), about 1 ms each; the samplers call
dozens per tile. Inside one kernel launch the patch is identical every time, so it is done once
per launch and the repeats are skipped. Semantics are unchanged (the same interpreter builder
backs every patch); this halves the run time of this directory.
"""
import inspect
import os

import pytest
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"  # set by tests/conftest.py

if INTERPRETING:
    from triton.runtime import interpreter as _I

    _ORIG_PATCH_LANG = _I._patch_lang
    _ORIG_GRID_CALL = _I.GridExecutor.__call__
    _patched_in_launch = None  # ids of the language modules patched in the running launch

    def _patch_lang_once(fn):
        global _patched_in_launch
        langs = {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}
        if _patched_in_launch is not None and langs <= _patched_in_launch:
            return _I._LangPatchScope()
        scope = _ORIG_PATCH_LANG(fn)
        if _patched_in_launch is not None:
            _patched_in_launch |= langs
        return scope

    def _grid_call(self, *args, **kwargs):
        global _patched_in_launch
        _patched_in_launch = set()
        try:
            return _ORIG_GRID_CALL(self, *args, **kwargs)
        finally:
            _patched_in_launch = None


@pytest.fixture(autouse=True)
def _fast_interpreter():
    if not INTERPRETING:
        yield
        return
    _I._patch_lang, _I.GridExecutor.__call__ = _patch_lang_once, _grid_call
    try:
        yield
    finally:
        _I._patch_lang, _I.GridExecutor.__call__ = _ORIG_PATCH_LANG, _ORIG_GRID_CALL
