"""The self-learner's path, imitated offline: notebooks run the way Colab runs them.

A fresh virtual environment gets what Colab preinstalls that the course touches — a torch that must be kept
(this machine's build stands in for Colab's CUDA one), ipywidgets 7.7.1, numpy, matplotlib, transformers 4.44
and datasets 2.19 (the package's lower bounds: Colab's own are newer), tokenizers, triton, an IPython kernel —
and nothing of the course. `google.colab` is importable and
imported when the interpreter starts (a stand-in module whose widget-manager switch prints a line), so every
notebook's setup cell takes its Colab branch: it installs the package from this clone (SLM_LAB_INSTALL, in
place of the GitHub address) the way it would from GitHub, once per session. Each notebook is copied into an
empty folder — no repository next to it — and executed there in the smoke profile, offline.

`make test` runs SUBSET; `make test-colab` (SLM_LAB_COLAB_ALL=1) runs every lecture and solved lab.
What only a real Colab can show (its CUDA torch, a T4's Triton, its widget manager drawing a slider) is not
claimed here.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from slm_lab.course.notebooks import INSTALL_ENV, ROOT, executed_notebooks

SUBSET = ["notebooks/00_why_slms.ipynb", "notebooks/02_build_and_train.ipynb", "notebooks/09_attention_kernels.ipynb",
          "solutions/12_scaling_lab.ipynb"]
ALL = os.environ.get("SLM_LAB_COLAB_ALL") == "1"
PICKED = [p.relative_to(ROOT).as_posix() for p in executed_notebooks()] if ALL else SUBSET
# Colab's ipywidgets; transformers and datasets at the package's lower bounds, the oldest it claims to run on.
COLAB_LIKE = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.1", "ipykernel", "numpy", "matplotlib", "tqdm",
              "transformers==4.44.2", "datasets==2.19.2", "tokenizers", "safetensors", "regex", "triton"]
KERNEL = "colab-sim"

FAKE_COLAB = '''"""A stand-in for Colab's google.colab: what the course's setup cell calls."""
from . import output  # noqa: F401
'''
FAKE_OUTPUT = '''def enable_custom_widget_manager():
    print("[colab-sim] custom widget manager enabled")
'''


def _run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="session")
def colab(tmp_path_factory):
    """(the environment's python, the environment variables a Colab-like kernel runs with, torch's version)."""
    import torch

    base = tmp_path_factory.mktemp("colab")
    env_dir, fake = base / "env", base / "fake"
    _run([sys.executable, "-m", "venv", str(env_dir)])
    py = env_dir / "bin" / "python"
    torch_pin = f"torch=={torch.__version__}"
    _run([py, "-m", "pip", "install", "-q", torch_pin])                      # Colab's torch, preinstalled
    _run([py, "-m", "pip", "install", "-q", "-c", "/dev/stdin", *COLAB_LIKE], input=torch_pin + "\n")
    (fake / "google" / "colab").mkdir(parents=True)                         # `google` stays a namespace package
    (fake / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB)
    (fake / "google" / "colab" / "output.py").write_text(FAKE_OUTPUT)
    (fake / "sitecustomize.py").write_text("import google.colab  # noqa: F401  (Colab imports it at start-up)\n")
    _run([py, "-m", "ipykernel", "install", "--prefix", str(env_dir), "--name", KERNEL])
    env = {"PYTHONPATH": str(fake), "JUPYTER_PATH": str(env_dir / "share" / "jupyter"),
           INSTALL_ENV: f"slm_lab[deploy,lora] @ {ROOT.as_uri()}", "SLM_LAB_PROFILE": "smoke",
           "SLM_LAB_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "SLM_LAB_CACHE": str(base / "cache"),
           "MPLBACKEND": "agg"}
    yield py, env, torch.__version__
    shutil.rmtree(env_dir, ignore_errors=True)          # a gigabyte of packages: not left for pytest to sweep


def test_a_failed_install_is_one_line(colab):
    """Before anything is installed (this test runs first): the setup cell with an address pip cannot install
    stops with one line naming what it tried, not a pip traceback."""
    from slm_lab.course.notebooks import setup_source

    py, env, _ = colab
    done = subprocess.run([py, "-c", setup_source()], capture_output=True, text=True,
                          cwd=py.parents[1], env={**os.environ, **env, INSTALL_ENV: "slm_lab @ file:///nowhere/slm-lab"})
    assert done.returncode == 1 and done.stderr.startswith("could not install the course package (slm_lab @ file:///nowhere")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("rel", PICKED)
def test_notebook_runs_as_in_colab(rel, colab, tmp_path, monkeypatch):
    py, env, torch_version = colab
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    folder = tmp_path / "content"                       # no repository around it, as in Colab
    folder.mkdir()
    path = folder / Path(rel).name
    shutil.copy(ROOT / rel, path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(folder)}}).execute()
    setup = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "[colab-sim] custom widget manager enabled" in setup and "slm_lab is ready" in setup, setup
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{rel}: {errors[0].ename}: {errors[0].evalue}"
    kept = _run([py, "-c", "import torch, ipywidgets, slm_lab; print(torch.__version__, ipywidgets.__version__, "
                     "slm_lab.__file__)"], cwd=folder).split()
    assert kept[:2] == [torch_version, "7.7.1"], f"the install replaced Colab's packages: {kept}"
    assert kept[2].startswith(str(py.parents[1])), f"slm_lab was not installed into the Colab-like environment: {kept[2]}"
