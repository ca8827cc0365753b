"""Shared fixtures: example networks as JSON objects and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import settings

from epim.sw import examples

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
