"""The wire between `slm-lab grade` and a submission's kernel: the grader runs the checks, the kernel runs
only the student's code.

A check run by the grader gets, for each name its check cell passes, either the value itself (data) or a
`Remote` handle to the object in the kernel (a function, a class, a module). `checks.call(fn, ...)` on a
Remote, or with a Remote among its arguments, sends the call to the kernel: the arguments go there pickled
(they come from the grader, which the kernel may trust); what comes back is loaded with
`torch.load(weights_only=True)`, which builds tensors, numbers, strings, bytes, lists, tuples and dicts and
nothing else, so the kernel cannot make the grader run code. An object that is not data comes back as a
new Remote. Whatever a student's cells do to their own process (patch `torch.allclose`, replace a check
module, hook IPython's error display), the verdict is computed here from values the kernel returned for
inputs the grader chose.

Kernel side: `serve(payload)`, sent as code through the kernel's ordinary execute channel, replies with one
display message of MIME type `MIME`.
"""
from __future__ import annotations

import base64
import contextvars
import io
import pickle
from collections.abc import Callable
from typing import Any

import torch

MIME = "application/x-slm-lab-rpc"
REPLY_LIMIT_BYTES = 64 * 2**20            # a reply bigger than this is refused (a kernel can send anything)
_HANDLE = "__slm_lab_remote__"
# The package names the running check switches off while a student's code runs (set by checks.forbids).
FORBIDDEN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("slm_lab_forbidden", default=())

# ------------------------------------------------------------------ kernel side ----
_objects: dict[int, Any] = {}
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def _is_data(value) -> bool:
    """A leaf that travels as itself. Exact types: a float subclass with its own __eq__ is not data, it is
    an object that would lie."""
    return type(value) in _SCALARS or type(value) in (torch.Tensor, torch.nn.Parameter)


def _is_key(k) -> bool:
    return isinstance(k, (str, int, float, bytes)) or (type(k) is tuple and all(_is_key(x) for x in k))


def _wrap(value):
    """value as data where it is data (NumPy arrays and scalars become tensors and numbers), else a handle."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (list, tuple):
        return type(value)(_wrap(v) for v in value)
    if isinstance(value, dict) and all(_is_key(k) for k in value):     # Counter, defaultdict: a plain dict
        return {k: _wrap(v) for k, v in value.items()}
    if _is_data(value):                 # lists, tuples and dicts were taken apart above: a leaf is left
        return value
    _objects[id(value)] = value
    return {_HANDLE: id(value), "type": type(value).__name__}


def _unwrap(value):
    if isinstance(value, Remote):
        return _objects[value.ref] if isinstance(value.ref, int) else _lookup(value.ref)
    if type(value) in (list, tuple):
        return type(value)(_unwrap(v) for v in value)
    if type(value) is dict:
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _lookup(name: str):
    import __main__

    try:
        return getattr(__main__, name)
    except AttributeError:
        raise NameError(f"name {name!r} is not defined") from None


def serve(payload: str) -> None:
    """Run one request from the grader and display its reply (see the module docstring)."""
    from IPython.display import display

    from . import CheckFailed, forbidding

    try:
        req = pickle.loads(base64.b64decode(payload))
        if req["op"] == "get":
            value = _lookup(req["name"])
        else:
            fn, forbid = _unwrap(req["fn"]), tuple(req.get("forbid", ()))
            args, kwargs = _unwrap(req["args"]), _unwrap(req["kwargs"])
            token = FORBIDDEN.set(forbid)       # a probe of the package runs the student's code through call()
            try:
                if isinstance(req["fn"], Remote):
                    with forbidding(forbid):
                        value = fn(*args, **kwargs)
                else:
                    value = fn(*args, **kwargs)
            finally:
                FORBIDDEN.reset(token)
        reply = {"value": _wrap(value)}
    except BaseException as exc:  # noqa: BLE001 - every failure of the student's code is the reply
        reply = {"error": type(exc).__name__, "message": str(exc)[:2000],
                 "not_done": isinstance(exc, NotImplementedError), "check_failed": isinstance(exc, CheckFailed)}
        if isinstance(exc, KeyboardInterrupt):
            raise
    buf = io.BytesIO()
    try:
        torch.save(reply, buf)
    except Exception as exc:  # noqa: BLE001 - e.g. a tensor subclass that does not save
        buf = io.BytesIO()
        torch.save({"error": type(exc).__name__, "message": f"its result could not be sent: {exc}"[:2000],
                    "not_done": False, "check_failed": False}, buf)
    display({MIME: base64.b64encode(buf.getvalue()).decode("ascii")}, raw=True)


# ------------------------------------------------------------------ grader side ----
class RemoteError(Exception):
    """A call in the kernel raised; `kind` is the exception's class name there."""

    def __init__(self, kind: str, message: str, not_done: bool = False, check_failed: bool = False):
        super().__init__(message)
        self.kind, self.not_done, self.check_failed = kind, not_done, check_failed


class Remote:
    """A handle to an object in the student's kernel: a global's name, or an id from an earlier reply."""

    def __init__(self, link: Link | None, ref: int | str, type_name: str = "function"):
        self.link, self.ref, self.type_name = link, ref, type_name

    def __call__(self, *args, **kwargs):
        if self.link is None:
            raise RuntimeError("a Remote handle was used outside a grading run")
        return self.link.call(self, args, kwargs, forbid=FORBIDDEN.get())

    def __reduce__(self):                 # pickled to the kernel: only the reference travels
        return (Remote, (None, self.ref, self.type_name))

    def __repr__(self) -> str:
        return f"<{self.type_name} in the submission's kernel>"


def contains_remote(values) -> bool:
    if isinstance(values, Remote):
        return True
    if isinstance(values, (list, tuple)):
        return any(contains_remote(v) for v in values)
    if isinstance(values, dict):
        return any(contains_remote(v) for v in values.values())
    return False


class Link:
    """The grader's end: `send(code) -> reply text` runs code in the kernel and returns what it displayed
    under MIME (the runner supplies it, with the cell's deadline)."""

    def __init__(self, send: Callable[[str], str | None]):
        self.send = send

    def _request(self, req: dict):
        payload = base64.b64encode(pickle.dumps(req)).decode("ascii")
        text = self.send(f"__import__('slm_lab.checks.remote', fromlist=['serve']).serve({payload!r})")
        if text is None:
            raise RemoteError("NoReply", "the kernel sent no reply")
        if not isinstance(text, str) or len(text) > REPLY_LIMIT_BYTES * 4 // 3 + 4:
            raise RemoteError("TooBig", f"its reply is over {REPLY_LIMIT_BYTES >> 20} MB")
        try:
            reply = torch.load(io.BytesIO(base64.b64decode(text, validate=True)), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - anything a kernel can send
            raise RemoteError("BadReply", f"its reply could not be read as data ({type(exc).__name__})") from None
        if not isinstance(reply, dict):
            raise RemoteError("BadReply", "its reply is not a reply")
        if "error" in reply:
            raise RemoteError(str(reply["error"]), str(reply.get("message", "")), bool(reply.get("not_done")),
                              bool(reply.get("check_failed")))
        return self._handles(reply.get("value"))

    def _handles(self, value):
        if isinstance(value, dict) and _HANDLE in value and isinstance(value[_HANDLE], int):
            return Remote(self, value[_HANDLE], str(value.get("type", "object")))
        if isinstance(value, (list, tuple)):
            return type(value)(self._handles(v) for v in value)
        if isinstance(value, dict):
            return {k: self._handles(v) for k, v in value.items()}
        return value

    def get(self, name: str):
        """The kernel's global `name`: its value if it is data, else a Remote."""
        return self._request({"op": "get", "name": name})

    def call(self, fn, args: tuple, kwargs: dict, forbid: tuple = ()):
        return self._request({"op": "call", "fn": fn, "args": args, "kwargs": kwargs, "forbid": forbid})
