"""Lab self-checks: each compares a student's function with a reference on fresh random inputs.

The reference is the package's own implementation (slm_lab.model, .tokenizer, .quantize, .kernels, ...),
computed before the student's function runs; a check never keeps a copy of it. To name a mistake, a
check compares a wrong answer with what that mistake gives, preferably the package's output on changed
inputs (tests/test_checks_accept_package.py runs every check on the package itself).
A check stops at the first problem and names it in one line (wrong shape, wrong dtype, values off
by how much, future positions visible, not normalised, NaN for large inputs, not done yet). On
success it prints one pass line. Check cells call them, e.g. `m02.check_attention(causal_attention)`.
In Jupyter a failed check shows just its line, not a traceback (`_render_traceback_`).

While a check runs a student's function, the package code that would do the task for them is switched off
(`@forbids(...)` on the check names it): calling it fails with "write it yourself: this calls ...". The
function's code itself is swapped, so a reference taken earlier (`from slm_lab.model import apply_rope`)
is caught too. Under `slm-lab grade` the check runs in the grader and the student's objects are Remote
handles into the kernel (`checks.remote`); `call` sends those calls there.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch

from .remote import FORBIDDEN as _FORBIDDEN
from .remote import Remote, RemoteError, contains_remote

__all__ = ["CheckFailed", "call", "expect_tensor", "expect_close", "passed", "fail", "forbids"]


class CheckFailed(AssertionError):
    """A lab check found a problem; the message is the one line a student reads."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [f"❌ {self}"]


def fail(message: str) -> NoReturn:
    raise CheckFailed(message)


# --------------------------------------------------------------- references off while a student's code runs ----


class Forbidden(CheckFailed):
    """The student's code called package code that does the task."""

    def __init__(self, name: str):
        what = "the course's own implementation" if name.startswith("slm_lab") else "which does the whole task"
        super().__init__(f"write it yourself: this calls {name}, {what}.")


def _stub(*args, **kwargs):
    # Runs with the globals of the function whose code it replaced: import what it needs by name.
    raise __import__("slm_lab.checks", fromlist=["Forbidden"]).Forbidden(__import__("sys")._getframe().f_code.co_name)


_ALLOWED = contextvars.ContextVar("slm_lab_references_allowed", default=False)


@contextlib.contextmanager
def references_allowed() -> Iterator[None]:
    """Run checks on the package's own implementation (the course's tests do, to test the checks); grading
    flags a submission that uses this."""
    token = _ALLOWED.set(True)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def forbids(*names: str) -> Callable:
    """Decorate a check: while it runs a student's function, the dotted `names` (functions, classes) refuse."""
    def wrap(check: Callable) -> Callable:
        @functools.wraps(check)
        def run(*args, **kwargs):
            token = _FORBIDDEN.set(() if _ALLOWED.get() else names)
            try:
                return check(*args, **kwargs)
            finally:
                _FORBIDDEN.reset(token)
        run.forbidden = names                                  # type: ignore[attr-defined]
        return run
    return wrap


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ImportError:
        owner = _resolve(module)[2]
    return owner, attr, getattr(owner, attr)


def _restore_init(cls: type, init) -> None:
    if init is None:
        delattr(cls, "__init__")
    else:
        cls.__init__ = init                                    # type: ignore[misc]


@contextlib.contextmanager
def forbidding(names: tuple[str, ...]) -> Iterator[None]:
    """Switch off the named functions and classes for the duration (see the module docstring)."""
    undo: list[Callable[[], None]] = []
    try:
        for name in names:
            try:
                owner, attr, obj = _resolve(name)
            except (ImportError, AttributeError):
                continue
            stub = _stub.__code__.replace(co_name=name)
            if isinstance(obj, type):                          # a class: its constructor refuses
                init = obj.__dict__.get("__init__")

                def refuse(self, *a, _name=name, **k):
                    raise Forbidden(_name)
                obj.__init__ = refuse                          # type: ignore[misc]
                undo.append(functools.partial(_restore_init, obj, init))
                continue
            f = obj
            while f is not None and not hasattr(f, "__code__"):
                f = getattr(f, "__wrapped__", None)
            while f is not None and f.__code__.co_freevars:     # a decorator's wrapper: its wrapped function
                f = getattr(f, "__wrapped__", None)
            if f is not None and not f.__code__.co_freevars:
                code = f.__code__
                f.__code__ = stub
                undo.append(functools.partial(setattr, f, "__code__", code))
            else:                                              # a builtin: only the module's name can be changed
                def refuse_call(*a, _name=name, **k):
                    raise Forbidden(_name)
                setattr(owner, attr, refuse_call)
                undo.append(functools.partial(setattr, owner, attr, obj))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def call(fn: Callable, *args, what: str, **kwargs) -> Any:
    """Run a student's function (in the kernel, when it or an argument is a Remote); turn its exceptions into
    one-line check failures."""
    if fn is None or not callable(fn):
        fail(f"{what}: expected a function, got {type(fn).__name__}; pass the function itself, without calling it.")
    try:
        remote = next((r for r in (fn, *args, *kwargs.values()) if contains_remote(r)), None)
        if remote is not None:
            link = _link_of(remote)
            return link.call(fn, args, kwargs, forbid=_FORBIDDEN.get())
        with forbidding(_FORBIDDEN.get()):
            return fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{what}: not done yet — replace `raise NotImplementedError` with your code.")
    except CheckFailed:
        raise
    except RemoteError as exc:
        if exc.not_done:
            fail(f"{what}: not done yet — replace `raise NotImplementedError` with your code.")
        if exc.check_failed:
            fail(str(exc))
        text = str(exc)
        fail(f"{what} raised {exc.kind}: {text.splitlines()[0] if text else ''}".rstrip(": "))
    except Exception as exc:  # the student's bug: say which and where, in one line
        fail(f"{what} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))


def _link_of(value):
    if isinstance(value, Remote):
        return value.link
    items = value.values() if isinstance(value, dict) else value
    return next(_link_of(v) for v in items if contains_remote(v))


def expect_tensor(out, *, what: str, shape: tuple | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Fail unless `out` is a tensor with the given shape and dtype."""
    if not isinstance(out, torch.Tensor):
        got = out.type_name if isinstance(out, Remote) else type(out).__name__
        fail(f"{what} should return a torch.Tensor, got {got}.")
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
