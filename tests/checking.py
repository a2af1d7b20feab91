"""Helpers shared by the tests of the lab checks (pytest puts tests/ on sys.path)."""
import pytest

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
