"""`slm-lab doctor`: is this machine ready for the course? One line per item, OK or MISSING + the fix."""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    problem: str = "MISSING"       # what a failed item is: MISSING, or INVALID for a bad setting

    def line(self) -> str:
        status = "OK" if self.ok else (self.problem if self.required else f"{self.problem} (optional)")
        text = f"{status:<19} {self.name:<22} {self.detail}"
        return text + (f"  → fix: {self.fix}" if not self.ok and self.fix else "")


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "installed")


def _package(name: str, module: str, fix: str, required: bool) -> Item:
    v = _version(module)
    return Item(name, v is not None, v or "not importable", fix, required)


def checks() -> list[Item]:
    items = []
    py = sys.version_info
    items.append(Item("python", (3, 10) <= py[:2] <= (3, 13), sys.version.split()[0],
                      "use Python 3.10–3.13 (e.g. `conda env create -f environment.yml`)"))
    torch_v = _version("torch")
    items.append(Item("torch", torch_v is not None, torch_v or "not importable",
                      "pip install torch==2.13.0   (before the course package)"))
    from slm_lab.errors import SLMLabError

    try:
        from slm_lab.settings import profile

        items.append(Item("profile", True, profile()))
    except SLMLabError as exc:
        items.append(Item("profile", False, str(exc).split(";")[0], "set SLM_LAB_PROFILE to smoke or full, or unset it",
                          problem="INVALID"))
    if torch_v is not None:
        import torch

        from slm_lab.settings import autocast_dtype, device

        try:
            dev = device()
            precision = "bf16 autocast" if autocast_dtype(dev) else "fp32"
            items.append(Item("device", True, f"{dev} ({precision})"))
        except SLMLabError as exc:
            items.append(Item("device", False, str(exc).split(";")[0], "unset SLM_LAB_DEVICE or set it to cpu, cuda or mps",
                              problem="INVALID"))
        items.append(Item("threads", True, f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"))
    try:
        from slm_lab.data import load_corpus

        n = len(load_corpus("shakespeare"))
        items.append(Item("offline corpus", True, f"shakespeare, {n:,} characters"))
    except SLMLabError as exc:
        items.append(Item("offline corpus", False, "shakespeare missing or damaged", str(exc).split("; ")[-1].rstrip(".")))
    for name, module in (("tokenizers", "tokenizers"), ("datasets", "datasets"),
                         ("transformers", "transformers"), ("safetensors", "safetensors")):
        items.append(_package(name, module, 'pip install -e ".[dev]"', True))
    for name, module, extra in (("triton", "triton", "kernels"), ("onnxruntime", "onnxruntime", "deploy"),
                                ("onnx", "onnx", "deploy"), ("peft", "peft", "lora"),
                                ("jupyterlab", "jupyterlab", "dev"), ("nbval", "nbval", "course"),
                                ("nbformat", "nbformat", "course")):
        items.append(_package(name, module, f'pip install -e ".[{extra}]"', False))
    items.append(_grading_sandbox())
    return items


def _grading_sandbox() -> Item:
    """Whether `slm-lab grade` can sandbox submissions here (instructors only, so optional)."""
    from .sandbox import INSTALL_HINT, describe, unavailable

    why = unavailable()
    return Item("grading sandbox", why is None, describe() if why is None else why.split(";")[0],
                INSTALL_HINT if why and "bwrap" in why else "see INSTRUCTORS.md, 'Grading safely'", required=False)


def run() -> int:
    items = checks()
    for item in items:
        print(item.line())
    missing = [i.name for i in items if i.required and not i.ok]
    if missing:
        print(f"\nNot ready: {', '.join(missing)}. Apply the fixes above (or run `make lab`).")
        return 1
    print("\nReady for the course.")
    return 0
