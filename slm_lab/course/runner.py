"""Run one graded notebook: the student's cells in a (sandboxed) kernel, the check cells in the grader.

The runner drives an IPython kernel through jupyter_client, cell by cell, over IPC sockets in a folder of
their own (the sandbox has no network). An ordinary cell is executed in the kernel; its outcome earns
nothing, so what it prints or raises does not matter. A check cell is never sent to the kernel: the grader
runs the solution's check cell (`m02.check_attention(causal_attention)`, or a hidden check's code) itself,
with the package's own check modules for the names mNN; each other name the cell reads is fetched from the
kernel, as data or as a Remote handle (`slm_lab.checks.remote`) whose calls run in the kernel. The check
passes iff it returns without raising, here, in the grader's process:
nothing a student's cell does to its own interpreter reaches that verdict.

A cell (ordinary, or a check with all its calls into the kernel) gets `timeout` seconds and the notebook
`limit` seconds in all; a cell past its timeout is interrupted (the kernel lives on), one that cannot be
interrupted kills the kernel; a kernel that exits is noticed within half a second.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import importlib.util
import io
import json
import os
import queue
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks.remote import MIME, Link
from . import sandbox

CHECK_MODULE = "slm_lab.checks"
CHECK_NAME = re.compile(r"m\d\d")


class Stopped(BaseException):
    """The kernel stopped answering a cell (a BaseException, so a check's `except Exception` lets it through)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why                  # "timeout", "overall", "died", "stuck"


@dataclass
class Outcome:
    passed: set = field(default_factory=set)       # code-cell indices of the checks that passed
    reason: str = ""
    messages: dict = field(default_factory=dict)   # code-cell index -> the failed check's one line


def free_names(source: str, where: str) -> list[str]:
    """The names a check cell reads that it does not bind itself and that are not builtins, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{where}: the check cell does not parse ({exc.msg})") from exc
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
    read = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return [n for n in dict.fromkeys(read) if n not in bound and not hasattr(builtins, n)]


class Kernel:
    """A kernel for one notebook, in the sandbox unless `sandboxed` is False."""

    def __init__(self, work: Path, ipc: Path, env: dict, sandboxed: bool, readable: tuple = (),
                 limits: sandbox.Limits | None = None):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if sandboxed:
            argv = sandbox.command(argv, work=work, writable=(ipc,), readable=readable, env=env,
                                   limits=limits or sandbox.Limits())
        specs = ipc / "kernels" / "slm-lab-graded"
        specs.mkdir(parents=True)
        (specs / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "graded", "language": "python",
                                                       "interrupt_mode": "message"}))
        ksm = KernelSpecManager(kernel_dirs=[str(ipc / "kernels")], ensure_native_kernel=False)
        self.km = KernelManager(kernel_name="slm-lab-graded", kernel_spec_manager=ksm, transport="ipc",
                                ip=str(ipc / "k"), connection_file=str(ipc / "connection.json"))
        self.sandboxed, self.ipc, self.work, self.env = sandboxed, ipc, work, env
        self.kc: Any = None

    def start(self, timeout: float) -> None:
        self.km.write_connection_file()
        if self.sandboxed:
            sandbox.prepare(self.ipc)          # the kernel creates its sockets here and reads the key file
        kw = {} if self.sandboxed else {"env": {**os.environ, **self.env}, "cwd": str(self.work)}
        self.log = open(self.ipc / "kernel.log", "wb")     # noqa: SIM115 - closed in stop()
        self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=self.log, **kw)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=timeout)

    def alive(self) -> bool:
        return self.km.is_alive()

    def execute(self, code: str, deadline: float, overall: float) -> str | None:
        """Run code; return the last MIME payload it displayed (or None). Raises Stopped."""
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False)
        payload = None
        while True:
            now = time.monotonic()
            if now >= min(deadline, overall):
                self._interrupt(msg_id)
                raise Stopped("overall" if overall <= deadline else "timeout")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(0.5, min(deadline, overall) - now))
            except queue.Empty:
                if not self.alive():
                    raise Stopped("died") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "display_data" and isinstance(content.get("data", {}).get(MIME), str):
                payload = content["data"][MIME]
            elif kind == "status" and content.get("execution_state") == "idle":
                return payload

    def _interrupt(self, msg_id: str) -> None:
        """Interrupt the running cell; kill the kernel if it does not stop within 5 s."""
        with contextlib.suppress(Exception):
            self.km.interrupt_kernel()
        end = time.monotonic() + 5
        while time.monotonic() < end and self.alive():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"):
                return
        self.stop()
        raise Stopped("stuck")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.kc is not None:
                self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)
        if getattr(self, "log", None) is not None:
            self.log.close()

    def last_words(self) -> str:
        """The last line the kernel wrote to stderr (why it did not start)."""
        try:
            lines = (self.ipc / "kernel.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:120] if lines else ""


def _judge(source: str, kernel: Kernel, deadline: float, overall: float, where: str) -> str:
    """Run a check cell here, in the grader; '' when it passed, else its one line. A name the cell reads is
    the package's check module for mNN, else the kernel's value of that name (data, or a Remote)."""
    from ..checks import CheckFailed

    link = Link(lambda code: kernel.execute(code, deadline, overall))
    scope: dict = {"__builtins__": builtins, "__name__": "__check__"}
    for name in free_names(source, where):
        if CHECK_NAME.fullmatch(name) and importlib.util.find_spec(f"{CHECK_MODULE}.{name}") is not None:
            scope[name] = importlib.import_module(f"{CHECK_MODULE}.{name}")
            continue
        try:
            scope[name] = link.get(name)
        except Exception as exc:  # noqa: BLE001 - RemoteError: a NameError in the kernel, an unreadable value
            return f"{name}: {exc}"
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, where, "exec"), scope)  # noqa: S102 - the solution's own check cell
    except CheckFailed as exc:
        return str(exc) or "failed"
    except Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - a check that breaks on a strange value fails, never passes
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return ""


def run(nb, work: Path, ipc: Path, *, timeout: float, limit: float, env: dict, sandboxed: bool,
        is_check, readable: tuple = (), limits: sandbox.Limits | None = None) -> Outcome:
    """Run nb's code cells in order (see the module docstring); `is_check(cell)` says which are checks."""
    result = Outcome()
    code_cells = [(k, c) for k, c in enumerate(nb.cells, 1) if c.cell_type == "code"]
    start = time.monotonic()
    overall = start + limit
    kernel = Kernel(work, ipc, env, sandboxed, readable, limits)
    try:
        try:
            kernel.start(timeout=min(120.0, limit))
        except Exception as exc:  # noqa: BLE001
            words = kernel.last_words()
            result.reason = f"the kernel did not start: {words or type(exc).__name__ + ': ' + str(exc)[:100]}"
            return result
        for num, (k, cell) in enumerate(code_cells):
            deadline = time.monotonic() + timeout
            try:
                if is_check(cell):
                    message = _judge(cell.source, kernel, deadline, overall, f"cell {k}")
                    if message:
                        result.messages[num] = message
                    else:
                        result.passed.add(num)
                elif cell.source.strip():
                    kernel.execute(cell.source, deadline, overall)
            except Stopped as stop:
                result.reason = result.reason or {
                    "timeout": f"cell {k} timed out after {timeout:g} s",
                    "stuck": f"cell {k} timed out after {timeout:g} s and could not be interrupted",
                    "overall": f"ran past the overall limit of {limit:g} s (in cell {k})",
                    "died": f"kernel died in cell {k}"}[stop.why]
                if stop.why != "timeout":
                    break
    finally:
        kernel.stop()
    return result
