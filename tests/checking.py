"""Helpers shared by the tests (pytest puts tests/ on sys.path): lab checks' verdicts, sharp random models."""
import math

import pytest
import torch

from slm_lab.checks import CheckFailed


def todo(*args, **kwargs):
    """An unsolved task, as the generated lab leaves it."""
    raise NotImplementedError


def rejects(check, *args, match: str) -> str:
    """Assert that check(*args) fails with a one-line message containing `match`; return the message."""
    with pytest.raises(CheckFailed) as info:
        check(*args)
    msg = str(info.value)
    assert "\n" not in msg, "a check failure must be one line"
    assert match in msg, msg
    return msg


def sharp(model, scale=2.5, seed=0):
    """Large random weights: confident, context-dependent predictions (like a trained model's)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale / math.sqrt(p.shape[1]))
    return model.eval()
