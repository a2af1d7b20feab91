"""Lab self-checks: each compares a student's function with a reference on fresh random inputs.

The reference is the package's own implementation (slm_lab.model, .tokenizer, .quantize, .kernels, ...),
computed before the student's function runs; a check never keeps a copy of it. To name a mistake, a
check compares a wrong answer with what that mistake gives, preferably the package's output on changed
inputs (tests/test_checks_accept_package.py runs every check on the package itself).
A check stops at the first problem and names it in one line (wrong shape, wrong dtype, values off
by how much, future positions visible, not normalised, NaN for large inputs, not done yet). On
success it prints one pass line. Check cells call them, e.g. `m02.check_attention(causal_attention)`.
In Jupyter a failed check shows just its line, not a traceback (`_render_traceback_`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import torch

__all__ = ["CheckFailed", "call", "expect_tensor", "expect_close", "passed", "fail"]


class CheckFailed(AssertionError):
    """A lab check found a problem; the message is the one line a student reads."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [f"❌ {self}"]


def fail(message: str) -> NoReturn:
    raise CheckFailed(message)


def call(fn: Callable, *args, what: str, **kwargs) -> Any:
    """Run a student's function; turn its exceptions into one-line check failures."""
    if fn is None or not callable(fn):
        fail(f"{what}: expected a function, got {type(fn).__name__}; pass the function itself, without calling it.")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{what}: not done yet — replace `raise NotImplementedError` with your code.")
    except CheckFailed:
        raise
    except Exception as exc:  # the student's bug: say which and where, in one line
        fail(f"{what} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))


def expect_tensor(out, *, what: str, shape: tuple | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Fail unless `out` is a tensor with the given shape and dtype."""
    if not isinstance(out, torch.Tensor):
        fail(f"{what} should return a torch.Tensor, got {type(out).__name__}.")
    if shape is not None and tuple(out.shape) != tuple(shape):
        fail(f"{what} returned shape {tuple(out.shape)}, expected {tuple(shape)}.")
    if dtype is not None and out.dtype != dtype:
        fail(f"{what} returned dtype {out.dtype}, expected {dtype}.")
    return out


def expect_close(out: torch.Tensor, ref: torch.Tensor, *, what: str, atol: float = 1e-5, rtol: float = 1e-4,
                 hint: str = "") -> None:
    """Fail with the largest difference when values disagree (NaN/inf named as such)."""
    expect_tensor(out, what=what, shape=ref.shape)
    out, ref = out.detach().double(), ref.detach().double()
    if torch.isnan(out).any() and not torch.isnan(ref).any():
        fail(f"{what} returned NaN where the reference is finite{'; ' + hint if hint else '.'}")
    if not torch.allclose(out, ref, atol=atol, rtol=rtol, equal_nan=True):
        diff = (out - ref).abs().nan_to_num(float("inf")).max().item()
        fail(f"{what}: values are off by up to {diff:.3g} (tolerance {atol:g}){'; ' + hint if hint else '.'}")


def passed(name: str, detail: str = "") -> None:
    print(f"✅ {name}: passed{f' ({detail})' if detail else ''}")
