"""The pytest plugin of a grading run: `slm-lab grade` loads it into each nbval run it starts
(`-p slm_lab.course.grade_plugin`); it does nothing unless SLM_LAB_GRADE_LOG names a log file.

- It logs each item's outcome as it happens, one JSON line per event (a cell started, with the kernel's
  pid; a cell passed or failed), so an overall timeout that kills the run still credits the checks that
  passed before it (`slm_lab.course.grade` reads the log).
- It fails a cell at once when its kernel dies (os._exit, a segfault, out of memory) instead of waiting
  out the cell timeout.

It runs inside the pytest subprocess, so it imports only the standard library (and pytest when active).
"""
from __future__ import annotations

import json
import os
import re
import time

LOG_ENV = "SLM_LAB_GRADE_LOG"


def cell_num(name: str) -> int | None:
    """N of an nbval item named "... Cell N": nbval counts code cells only, from 0 (nbval/plugin.py,
    IPyNbFile.collect), which is how items map back to cells."""
    m = re.search(r"Cell (\d+)$", name or "")
    return int(m.group(1)) if m else None


class KernelDied(RuntimeError):
    """The kernel process exited while a cell was running (os._exit, a segfault, out of memory)."""


# Read once and removed, so the kernel (started later, with this environment) is not handed the log's path.
_LOG_PATH = os.environ.pop(LOG_ENV, "")


def _log(event: dict) -> None:
    with open(_LOG_PATH, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _watch(kernel) -> None:
    """Make nbval's wait for a cell's reply notice a dead kernel within half a second."""
    if getattr(kernel, "_slm_lab_watched", False) or not hasattr(kernel, "get_message"):
        return
    from queue import Empty

    def await_reply(msg_id, timeout=None):
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                raise Empty
            try:
                msg = kernel.get_message(stream="shell", timeout=wait)
            except Empty:
                if not kernel.is_alive():
                    raise KernelDied("KernelDied: the kernel died while this cell ran") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["content"]["status"] == "aborted":
                    raise RuntimeError("Kernel aborted execution request")
                return

    kernel.await_reply = await_reply
    kernel._slm_lab_watched = True


if _LOG_PATH:
    import pytest

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(item):
        kernel = getattr(getattr(item, "parent", None), "kernel", None)
        provisioner = getattr(getattr(kernel, "km", None), "provisioner", None)
        pid = getattr(getattr(provisioner, "process", None), "pid", None)
        _log({"start": getattr(item, "cell_num", None), "pid": pid})
        if kernel is not None:
            _watch(kernel)

    def pytest_runtest_logreport(report):
        num = cell_num(report.nodeid.split("::")[-1])
        if num is not None and (report.when == "call" or not report.passed):
            _log({"cell": num, "when": report.when, "passed": bool(report.passed)})
