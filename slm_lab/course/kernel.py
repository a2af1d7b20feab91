"""The Jupyter kernel of this clone: installed inside its .venv by `make setup`, never per user.

Older set-ups registered one per-user `slm-lab` kernel (~/.local/share/jupyter/kernels/slm-lab) that every
clone overwrote, so a notebook could silently import another clone's `slm_lab`. `remove-legacy` deletes that
entry when it points at this clone's .venv (an entry of another clone is left alone, with a line saying so).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

KERNEL_NAME = "slm-lab"


def user_kernel_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "kernels" / KERNEL_NAME


def env_kernel_dir() -> Path:
    return Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def remove_legacy(venv: Path | None = None) -> str:
    """Remove the per-user kernel entry if it runs this venv's python; say what was done."""
    # abspath, not resolve: a venv's python is a symlink to the base interpreter.
    venv = Path(os.path.abspath(venv or sys.prefix))
    spec = user_kernel_dir() / "kernel.json"
    if not spec.is_file():
        return ""
    try:
        python = Path(os.path.abspath(json.loads(spec.read_text())["argv"][0]))
    except (ValueError, KeyError, IndexError):
        return f"left {spec.parent} alone: its kernel.json is unreadable."
    if venv not in python.parents:
        return (f"note: a per-user `{KERNEL_NAME}` kernel from another environment ({python}) exists; "
                "this clone uses its own.")
    shutil.rmtree(spec.parent)
    return f"removed the old per-user `{KERNEL_NAME}` kernel ({spec.parent}); this clone's kernel is in {venv}."


def main(argv: list[str]) -> int:
    if argv[:1] != ["remove-legacy"]:
        print("usage: python -m slm_lab.course.kernel remove-legacy", file=sys.stderr)
        return 2
    message = remove_legacy()
    if message:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
