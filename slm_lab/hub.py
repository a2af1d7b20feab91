"""Real pretrained models from the Hugging Face Hub, when there is a way to get them — and one line when not.

The course runs offline; a student with a network (Colab, a laptop) can also load a real SLM such as
`HuggingFaceTB/SmolLM2-135M`. `hub_source` says where a model would come from without waiting long: a folder
on disk, the Hugging Face cache, or the network (a 3-second connection test), or None — also when
SLM_LAB_OFFLINE or HF_HUB_OFFLINE is set. `load_causal_lm` loads a transformers model and its tokenizer from
that source, in float32 and eval mode, or raises one SLMLabError line; `slm_lab.hf.from_hf` turns a Llama or
GPT-2 one into the course's SLM with the same logits.
"""
from __future__ import annotations

import socket
from pathlib import Path

from .data import _offline_requested  # the course's one offline switch
from .errors import SLMLabError

HUB_HOST = "huggingface.co"
SOURCES = ("local", "cache", "network")


def hub_source(repos, timeout: float = 3.0, weights: str = "model.safetensors") -> str | None:
    """Where every repo in `repos` can be loaded from: 'local' (each is a folder on disk), 'cache' (each has
    its weights in the Hugging Face cache), 'network' (the Hub answers within `timeout` seconds), or None."""
    repos = list(repos)
    if all(Path(r).is_dir() for r in repos):
        return "local"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    if all(isinstance(try_to_load_from_cache(r, weights), str) for r in repos):
        return "cache"
    if _offline_requested():
        return None
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return "network"
    except OSError:
        return None


def load_causal_lm(repo: str | Path, source: str):
    """(model, tokenizer) from transformers' Auto classes: float32, eval mode; downloads only when source is
    'network'. One SLMLabError line when transformers is missing or the model cannot be loaded."""
    if source not in SOURCES:
        raise SLMLabError(f"source={source!r} is not one of {', '.join(SOURCES)}; ask hub_source() where the model is.")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SLMLabError("transformers is not installed; pip install transformers to load Hub models.") from None
    local = dict(local_files_only=source != "network")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(repo), **local)
        model = AutoModelForCausalLM.from_pretrained(str(repo), **local).float().eval()
    except Exception as exc:   # a missing folder, a download cut short, a network gone: one line, not a trace
        first = (str(exc).splitlines() or [""])[0][:120]
        raise SLMLabError(f"could not load {repo} from {source} ({type(exc).__name__}: {first}); check the name, "
                          "or run offline without it.") from None
    return model, tokenizer
