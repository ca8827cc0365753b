"""Shared fixtures: example networks as JSON objects and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import settings

from epim.sw.chip import examples

settings.register_profile("default", deadline=None, max_examples=40)
settings.load_profile("default")


@pytest.fixture
def net_obj() -> dict:
    return examples.default_layer_net()


@pytest.fixture
def net_path(tmp_path, net_obj):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(net_obj))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


MISSING = {"torch": "PyTorch is not installed: these tests need the ML side; install it with "
                    "pip install -e '.[ml]' (or '.[test]' for everything the tests use)"}


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A test module that cannot import an optional stack fails with the command that
    installs it, the same way for every module (not with a bare ModuleNotFoundError)."""
    report = yield
    if report.failed:
        for module, message in MISSING.items():
            if f"No module named '{module}'" in str(report.longrepr):
                report.longrepr = f"{collector.nodeid}: {message}"
    return report
