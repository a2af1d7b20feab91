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

# Fixture notebooks are inputs to grading tests, not notebooks to run on their own.
collect_ignore_glob = ["tests/fixtures/*"]
