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
    name = override or os.environ.get("SLM_LAB_DEVICE", "").strip()
    where = f"device {name!r}" if override else f"SLM_LAB_DEVICE={name!r}"
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise SLMLabError(f"{where} is not a device name; use 'cpu', 'cuda' or 'mps' "
                              "(or unset SLM_LAB_DEVICE to choose automatically).") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SLMLabError(f"{where} was asked for but CUDA is not available here; use 'cpu'.")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SLMLabError(f"{where} was asked for but there are {torch.cuda.device_count()} GPU(s); use 'cuda:0'.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SLMLabError(f"{where} was asked for but MPS is not available here; use 'cpu'.")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise SLMLabError(f"{where} is not supported by the course; use 'cpu', 'cuda' or 'mps'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(choice: str | torch.device | None = None) -> torch.device:
    """A device argument: the one given (validated), or the course device when None."""
    if isinstance(choice, torch.device):
        return choice
    return device(choice)


def autocast_dtype(dev: torch.device) -> torch.dtype | None:
    """bf16 where the device computes it natively (CUDA GPUs from Ampere on); None: stay in fp32.

    On the CPU bf16 autocast is slower than fp32 for models this small and changes the numbers the
    notebooks quote, so the CPU trains in fp32.
    """
    if dev.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return None


def autocast(dev: torch.device):
    """A context that runs the forward pass in bf16 where `autocast_dtype` says so, else does nothing."""
    import contextlib

    dtype = autocast_dtype(dev)
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def seed_everything(seed: int = 1337) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Use `n` CPU threads for torch (default: `SLM_LAB_THREADS`, else all cores); return the count."""
    if n is None:
        raw = os.environ.get("SLM_LAB_THREADS", "").strip()
        try:
            n = int(raw) if raw else 0
        except ValueError:
            raise SLMLabError(f"SLM_LAB_THREADS={raw!r} is not a whole number; set it to e.g. 2, or unset it.") from None
        n = n or (os.cpu_count() or 1)
    if n < 1:
        raise SLMLabError(f"threads={n} must be at least 1 (the machine has {os.cpu_count()} CPUs).")
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
