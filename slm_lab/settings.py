"""Run-wide settings: the profile (smoke | full), the device, seeding and the cache directory.

Notebooks read sizes through `pick(smoke=..., full=...)`, so one notebook serves both the
seconds-long test run (`SLM_LAB_PROFILE=smoke`) and the real lesson (the default, `full`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .errors import SLMLabError

PROFILES = ("smoke", "full")
T = TypeVar("T")


def profile() -> str:
    """The active profile, from `SLM_LAB_PROFILE` (default `full`)."""
    name = os.environ.get("SLM_LAB_PROFILE", "full").strip().lower() or "full"
    if name not in PROFILES:
        raise SLMLabError(
            f"SLM_LAB_PROFILE={name!r} is not a profile; set it to 'smoke' (tests) or 'full' (the lesson)."
        )
    return name


def is_smoke() -> bool:
    return profile() == "smoke"


def pick(smoke: T, full: T) -> T:
    """Choose a value by profile: `steps = pick(smoke=20, full=3000)`."""
    return smoke if is_smoke() else full


def device(override: str | None = None) -> torch.device:
    """The compute device: `override`, else `SLM_LAB_DEVICE`, else cuda → mps → cpu."""
    name = override or os.environ.get("SLM_LAB_DEVICE")
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise SLMLabError(f"device {name!r} is not a torch device name; use 'cpu', 'cuda' or 'mps'.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SLMLabError(f"device {name!r} was asked for but CUDA is not available here; use 'cpu'.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SLMLabError(f"device {name!r} was asked for but MPS is not available here; use 'cpu'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 1337) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Use `n` CPU threads for torch (default: `SLM_LAB_THREADS`, else all cores); return the count."""
    n = n or int(os.environ.get("SLM_LAB_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cache_dir(*parts: str) -> Path:
    """A directory under the course cache (`SLM_LAB_CACHE`, default ~/.cache/slm_lab), created on demand."""
    root = os.environ.get("SLM_LAB_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "slm_lab"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def summary() -> str:
    """One line of versions and device, printed by every notebook's setup cell."""
    import platform
    import sys

    dev = device()
    return (
        f"python {sys.version.split()[0]} | torch {torch.__version__} | device {dev}"
        f" | threads {torch.get_num_threads()} | profile {profile()} | {platform.system()}"
    )
