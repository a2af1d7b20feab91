"""Checkpoints: weights as safetensors, config and tokenizer as JSON, every file written atomically.

A checkpoint directory holds
  model.safetensors   the weights (a tied output head is stored once)
  config.json         {"model": SLMConfig fields, "meta": anything else (preset, step, val loss...)}
  tokenizer.json      the tokenizer, when one was given
  trainer_state.pt    optimizer, step, RNG state and history — only needed to resume training
Each file is written to a temporary name and renamed, so a crash never leaves a half-written file
and never destroys the previous checkpoint.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, write_text
from .errors import SLMLabError
from .model import SLM, SLMConfig

if TYPE_CHECKING:   # imported on use only (load_checkpoint)
    from .tokenizer import Tokenizer


def save_checkpoint(directory: str | Path, model: SLM, tokenizer=None, meta: dict | None = None,
                    trainer_state: dict | None = None) -> Path:
    """Write a checkpoint directory (see the module docstring) and return its path."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_weights:
        state.pop("lm_head.weight", None)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    config = {"model": model.cfg.to_dict(), "meta": meta or {}}
    write_text(directory / "config.json", json.dumps(config, indent=2))
    if tokenizer is not None:
        write_text(directory / "tokenizer.json", json.dumps(tokenizer.to_dict(), ensure_ascii=False))
    if trainer_state is not None:
        with atomic_path(directory / "trainer_state.pt") as tmp:
            torch.save(trainer_state, tmp)
    return directory


@dataclass
class Checkpoint:
    model: SLM
    tokenizer: Tokenizer | None
    meta: dict
    path: Path


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load model (eval mode), tokenizer and meta from a checkpoint directory (pruned models included:
    the config records their head_dim and widths)."""
    from .tokenizer import load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise SLMLabError(f"no checkpoint directory at {directory}; train one with "
                          f"`slm-lab train --preset tiny --out {directory}` or check the path.")
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise SLMLabError(f"{directory} is not a complete checkpoint: {name} is missing; "
                              "point at a directory written by save_checkpoint or `slm-lab train`.")
    try:
        config = json.loads((directory / "config.json").read_text())
        cfg = SLMConfig.from_dict(config["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SLMLabError(f"{directory / 'config.json'} is unreadable ({exc}); re-save the checkpoint.") from None
    model = SLM(cfg)
    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise SLMLabError(f"{directory / 'model.safetensors'} is corrupt ({exc}); re-save the checkpoint.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_weights and k == "lm_head.weight")]
    if missing or unexpected:
        raise SLMLabError(f"{directory} does not match its config (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); it was saved from a different model.")
    tok_path = directory / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path) if tok_path.is_file() else None
    return Checkpoint(model.to(device).eval(), tokenizer, config.get("meta", {}), directory)


def load_trainer_state(directory: str | Path) -> dict:
    """The optimizer, step, RNG and history saved beside a checkpoint (tensors and plain containers only:
    loaded with weights_only=True, so a planted pickle cannot run code)."""
    path = Path(directory) / "trainer_state.pt"
    if not path.is_file():
        raise SLMLabError(f"{directory} has no trainer_state.pt, so training cannot resume from it; "
                          "save with trainer state or start a fresh run.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, or an object weights_only refuses to unpickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SLMLabError(f"{path} cannot be read ({first[:160]}); start a fresh run in another directory.") from None


def check_out_dir(directory: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make sure a run can save to `directory` before it trains (so no run is lost at the end).

    Refuses, in one sentence each: a path that is a file, a folder that cannot be created or written, a
    folder that already holds a checkpoint (unless resuming or overwriting), resuming from no checkpoint.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SLMLabError(f"--out {directory} is an existing file, not a directory; choose a directory path.")
    has_checkpoint = (directory / "model.safetensors").is_file()
    if resume and not (directory / "trainer_state.pt").is_file():
        raise SLMLabError(f"there is no run to resume in {directory} (no trainer_state.pt); "
                          "drop --resume to start a fresh run there.")
    if has_checkpoint and not (resume or overwrite):
        raise SLMLabError(f"{directory} already holds a checkpoint; add --resume to continue it, --overwrite "
                          "to replace it, or choose another --out.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise SLMLabError(f"cannot write to --out {directory} ({exc.strerror or exc}); "
                          "choose a folder you can write to.") from None
    return directory
