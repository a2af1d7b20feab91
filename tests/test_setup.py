"""Set-up that stands on its own: this clone's kernel lives in its own environment, and the legacy
per-user kernel entry (which every clone used to overwrite) is removed only when it is ours."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from slm_lab.course import kernel


def _spec(root: Path, python: str) -> Path:
    d = root / "kernels" / kernel.KERNEL_NAME
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps({"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                               "display_name": "x", "language": "python"}))
    return d


def test_the_course_kernel_runs_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if kernel.KERNEL_NAME not in specs:
        pytest.skip("no slm-lab kernel registered (set up without make)")
    where = Path(specs[kernel.KERNEL_NAME])
    assert Path(sys.prefix) in where.parents, f"the slm-lab kernel found first is {where}, outside {sys.prefix}"
    argv0 = json.loads((where / "kernel.json").read_text())["argv"][0]
    assert Path(argv0).parent == Path(sys.prefix) / "bin"


def test_remove_legacy_removes_only_our_own_user_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    ours = _spec(tmp_path / "user", str(Path(sys.prefix) / "bin" / "python"))
    assert "removed the old per-user" in kernel.remove_legacy() and not ours.exists()
    theirs = _spec(tmp_path / "user", "/elsewhere/.venv/bin/python")
    assert "another environment" in kernel.remove_legacy() and theirs.exists()
    assert kernel.remove_legacy(Path("/elsewhere/.venv")).startswith("removed") and not theirs.exists()
    assert kernel.remove_legacy() == ""                      # nothing there: nothing said


def test_gitignore_keeps_runs_out_of_the_repository():
    from slm_lab.course.notebooks import ROOT

    assert "runs/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("apt-get") is None,
                    reason="the Makefile installs bubblewrap only as root on a Debian-like system")
def test_make_setup_gives_grading_its_sandbox():
    """Where `make` can install bubblewrap it does, so the grading tests run sandboxed instead of skipping."""
    from slm_lab.course import sandbox

    assert sandbox.unavailable() is None, sandbox.unavailable()
