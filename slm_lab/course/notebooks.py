"""Notebook conventions in one place: the repository slug, the Colab badge, the setup cell,
authoring from a percent-format script, and executing a notebook with a profile.

Every course notebook starts with
  1. a markdown cell: the Colab badge (pointing at the notebook's own path) and the title;
  2. the setup code cell: installs `slm_lab` when running in Colab, does nothing elsewhere;
and check cells carry metadata {"tags": ["check"], "slm_lab": {"check": ID, "points": N}}.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat

from ..errors import SLMLabError

REPO_SLUG = "slm-lab/slm-lab"       # the one place the GitHub repository is named
BRANCH = "main"
ROOT = Path(__file__).resolve().parents[2]
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_MARK = "# Setup: in Colab this installs the course package; elsewhere it does nothing."


def executed_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks stored with outputs: lectures, then solved labs (labs/ are stored unexecuted)."""
    return sorted((root / "notebooks").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))


def colab_url(relpath: str | Path) -> str:
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{BRANCH}/{Path(relpath).as_posix()}"


def badge_markdown(relpath: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMG})]({colab_url(relpath)})"


INSTALL_ENV = "SLM_LAB_INSTALL"     # overrides the pip spec the setup cell installs (tests: the local clone)
DRIVE = "/content/drive/MyDrive"
EXTRA_MODULES = {"deploy": ("onnx", "onnxruntime", "onnxscript"), "lora": ("peft",), "kernels": ("triton",)}


def install_spec(extras: str = "") -> str:
    """What the setup cell pip-installs in Colab: the package from REPO_SLUG's BRANCH, with extras."""
    return f"slm_lab{f'[{extras}]' if extras else ''} @ git+https://github.com/{REPO_SLUG}@{BRANCH}"


def setup_source(extras: str = "") -> str:
    """The setup cell. In Colab (google.colab imported) it installs the package unless this session already has
    it (and the extras' modules), keeping Colab's own torch (a constraint pins the installed version); fails with
    one line when pip does; turns on Colab's widget manager; keeps the course cache on Google Drive when Drive
    is mounted; and says what will take long. Elsewhere it does nothing. It imports nothing from slm_lab: it
    runs before the package is there."""
    needed = ("slm_lab",) + tuple(m for e in extras.split(",") if e for m in EXTRA_MODULES.get(e.strip(), ()))
    return "\n".join([
        SETUP_MARK,
        "import sys",
        'if "google.colab" in sys.modules:',
        "    import importlib.util, os, subprocess",
        "    import torch",
        f'    spec = os.environ.get("{INSTALL_ENV}", "{install_spec(extras)}")  # address: slm_lab/course/notebooks.py',
        f"    if any(importlib.util.find_spec(m) is None for m in {needed!r}):   # once per session",
        '        with open("/tmp/slm_lab_keep_torch.txt", "w") as keep:   # never replace Colab\'s own torch',
        '            keep.write(f"torch=={torch.__version__}\\n")',
        '        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", keep.name, spec],',
        "                              capture_output=True, text=True)",
        "        if done.returncode != 0:",
        '            raise SystemExit(f"could not install the course package ({spec}): "',
        '                             f"{(done.stderr.strip().splitlines() or [\'pip failed\'])[-1]}")',
        "    from google.colab import output",
        "    output.enable_custom_widget_manager()   # the notebooks' sliders render with Colab's ipywidgets",
        f'    if os.path.isdir("{DRIVE}"):   # Drive is mounted: trained models outlive the session',
        f'        os.environ.setdefault("SLM_LAB_CACHE", "{DRIVE}/slm_lab_cache")',
        '    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None',
        '    print(f"slm_lab is ready; it trains on {gpu or \'the CPU (for a GPU: Runtime > Change runtime type)\'}.")',
        '    if "SLM_LAB_CACHE" in os.environ:',
        '        print(f"Trained models are cached in {os.environ[\'SLM_LAB_CACHE\']}, which outlives this session.")',
        "    else:",
        '        print("Colab deletes its files when the session ends, and with them the models the course trains: "',
        '              "modules 04-12 then train module 02\'s model again first (minutes). To keep them, mount Drive "',
        "              \"(from google.colab import drive; drive.mount('/content/drive')) and run this cell again.\")",
    ])


def setup_extras(source: str) -> str:
    """The extras a setup cell installs ('deploy', 'lora', '' for none), read from its pip spec."""
    m = re.search(r"slm_lab\[([\w,]+)\]", source)
    return m.group(1) if m else ""


def restamp_setup(root: Path = ROOT) -> list[Path]:
    """Rewrite every lecture's, solved lab's and lab's Colab badge and setup cell (after REPO_SLUG, BRANCH or
    setup_source changed); outputs are kept, since outside Colab the cell does nothing. Returns the
    notebooks changed."""
    changed = []
    for path in [*executed_notebooks(root), *sorted((root / "labs").glob("*.ipynb"))]:
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[1]
        new = setup_source(setup_extras(cell.source))
        badge = stamp(nb, path.relative_to(root))
        if cell.source != new or badge:
            cell.source = new
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def stamp(nb, relpath: str | Path) -> bool:
    """Make the first markdown cell's badge point at relpath; return True if anything changed."""
    first = nb.cells[0]
    if first.cell_type != "markdown":
        raise ValueError(f"{relpath}: the first cell must be the markdown cell with the Colab badge.")
    badge = badge_markdown(relpath)
    new = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", lambda m: badge, first.source, count=1)
    if "[![Open In Colab]" not in first.source:
        new = badge + "\n\n" + first.source
    changed = new != first.source
    first.source = new
    return changed


_CELL = re.compile(r"^# %%(.*)$", re.M)


def from_percent(text: str, relpath: str | Path, extras: str = ""):
    """Build a notebook from a percent-format script (authoring aid).

    `# %% [markdown]` starts a markdown cell (its lines lose their leading '# '); `# %%` a code cell;
    `# %% check id=02.attention points=3` a check cell. The badge and the setup cell are added first.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}})
    parts = _CELL.split(text)
    cells = []
    for header, body in zip(parts[1::2], parts[2::2], strict=True):
        body = body.strip("\n")
        header = header.strip()
        if header.startswith("[markdown]"):
            lines = [re.sub(r"^# ?", "", line) for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines).strip()))
            continue
        cell = nbformat.v4.new_code_cell(body)
        if header.startswith("check"):
            fields = dict(kv.split("=", 1) for kv in header.split()[1:])
            cell.metadata["tags"] = ["check"]
            cell.metadata["slm_lab"] = {"check": fields["id"], "points": int(fields.get("points", 1))}
        cells.append(cell)
    if not cells or cells[0].cell_type != "markdown":
        raise ValueError("a notebook script must start with a `# %% [markdown]` title cell")
    cells[0].source = badge_markdown(relpath) + "\n\n" + cells[0].source
    cells.insert(1, nbformat.v4.new_code_cell(setup_source(extras)))
    nb.cells = cells
    return nb


def execute(path: str | Path, profile: str = "full", timeout: int = 1800) -> None:
    """Run a notebook top to bottom in its own directory with SLM_LAB_PROFILE=profile; save it with outputs
    and a provenance stamp (the profile and a hash of the slm_lab code it ran, see `provenance`)."""
    import time

    from nbclient import NotebookClient

    from .provenance import stamp

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("SLM_LAB_PROFILE")
    os.environ["SLM_LAB_PROFILE"] = profile
    # The kernel imports slm_lab as it is now: fingerprint it now, and refuse to stamp if it changed
    # during the run (the outputs could then mix two versions of the package).
    before = stamp(nbformat.from_dict(nb), profile)["sha256"]
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if old is None:
            os.environ.pop("SLM_LAB_PROFILE", None)
        else:
            os.environ["SLM_LAB_PROFILE"] = old
    seconds = time.perf_counter() - t0
    if stamp(nb, profile, seconds=seconds)["sha256"] != before:
        nb.metadata.pop("slm_lab", None)
        write(nb, path)
        raise SLMLabError(f"slm_lab changed while {path} ran, so its outputs may mix two versions of the "
                          "package; it is saved unstamped (stale) — execute it again.")
    write(nb, path)


def write(nb, path: str | Path) -> None:
    """Write a notebook deterministically (so labs/ can be compared byte for byte)."""
    Path(path).write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def check_cells(nb) -> list:
    """The check cells of a notebook, in order."""
    return [c for c in nb.cells if c.cell_type == "code" and "slm_lab" in c.metadata
            and "check" in c.metadata["slm_lab"]]
