"""Test-wide settings, applied before any test or notebook kernel starts (kernels inherit os.environ):
small, offline and deterministic runs."""
import os

os.environ.setdefault("SLM_LAB_PROFILE", "smoke")
os.environ.setdefault("SLM_LAB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

# Triton reads TRITON_INTERPRET when it defines a kernel, and some libraries (transformers, torch's
# own dispatch) import it early: set it before any test module is collected, not in one of them.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Fixture notebooks are inputs to grading tests, not notebooks to run on their own.
collect_ignore_glob = ["tests/fixtures/*"]
