import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("SLM_LAB_TEST_THREADS", "2")))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty course cache for tests that must not see (or touch) the real one."""
    monkeypatch.setenv("SLM_LAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _package_references_allowed(request):
    """Tests run the checks on the package's own implementation (and on mistakes built from it), which a check
    otherwise refuses while it runs a student's function; tests of that refusal mark themselves `forbidding`."""
    from slm_lab.checks import references_allowed

    if request.node.get_closest_marker("forbidding"):
        yield
        return
    with references_allowed():
        yield
