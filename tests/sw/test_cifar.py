"""CIFAR-10 support: the loaders, ResNet-20, pruning with residual ties, the benchmark driver, and
data-parallel training with two torchrun processes."""

import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from epim.sw.chip import data, reference, workload
from epim.sw.chip.netfile import parse
from epim.sw.ml import compress, export, models, train
from epim.sw.studies import cifar

PIM = models.DEFAULT_PIM


def fake_cifar(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is visible: class c has a bright band at rows 3c..3c+2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    x = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for i, c in enumerate(labels):
        x[i, :, 3 * c:3 * c + 3] = 220
    return x, labels


def write_batches(folder, train_n=60, test_n=30):
    """The python-batch layout (`cifar-10-batches-py`) with small batches."""
    folder.mkdir(parents=True)
    xs, ys = fake_cifar(train_n, 0)
    for i, part in enumerate(np.array_split(np.arange(train_n), 5), 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": xs[part].reshape(len(part), -1),
                         b"labels": ys[part].tolist()}, f)
    xt, yt = fake_cifar(test_n, 1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": xt.reshape(test_n, -1), b"labels": yt.tolist()}, f)
    return (xs, ys), (xt, yt)


@pytest.fixture
def small_sizes(monkeypatch):
    monkeypatch.setitem(data.SIZES, "cifar10", {"train": 60, "test": 30})


class Payload:
    """A pickle that would run a command when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo unpickled > pwned",))


def test_a_batch_that_would_run_code_is_refused(tmp_path, small_sizes, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": []}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="test_batch: not a CIFAR-10 python batch: "
                                         "UnpicklingError: posix.system may not appear"):
        data.read_cifar10("test", folder)
    assert not (tmp_path / "pwned").exists()


def test_python_batches_load_from_the_folder_or_its_parent(tmp_path, small_sizes):
    (xs, ys), (xt, yt) = write_batches(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        x, y = data.load("cifar10", "train", path=path)
        np.testing.assert_array_equal(x, xs)
        np.testing.assert_array_equal(y, ys)
    x, y = data.load("cifar10", "test", limit=7, path=tmp_path)
    assert x.shape == (7, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, yt[:7])


def test_jpeg_npz_loads_and_the_environment_variable_is_read(tmp_path, small_sizes,
                                                               monkeypatch):
    from PIL import Image

    arrays = {}
    for split, (x, y) in (("train", fake_cifar(60, 0)), ("test", fake_cifar(30, 1))):
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img.transpose(1, 2, 0)).save(buf, "JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs])
        arrays[f"{split}_labels"] = y.astype(np.uint8)
    np.savez(tmp_path / "c.npz", **arrays)
    monkeypatch.setenv(data.CIFAR_ENV, str(tmp_path / "c.npz"))
    x, y = data.load("cifar10", "test")
    ref, labels = fake_cifar(30, 1)
    np.testing.assert_array_equal(y, labels)
    # JPEG is lossy (noise suffers most): the decoded images keep each class's bright band
    assert abs(x.mean() - ref.mean()) < 5
    for img, c in zip(x, labels, strict=True):
        assert img[:, 3 * c + 1].mean() > 150, c


def test_missing_cifar_names_where_it_looked_and_what_to_give(tmp_path, monkeypatch):
    monkeypatch.delenv(data.CIFAR_ENV, raising=False)
    with pytest.raises(data.DataMissing, match=r"CIFAR-10 not found at .*nowhere.*--data-path"):
        data.load("cifar10", "test", path=tmp_path / "nowhere")


def test_wrong_cifar_file_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match="not a CIFAR-10 JPEG archive .*test_jpeg"):
        data.load("cifar10", "test", path=tmp_path / "bad.npz")


def test_resnet20_has_he_et_al_shape_and_exports():
    nodes = models.nodes("resnet20")
    convs = [n for n in nodes if n.op == "conv"]
    assert sum(n.kernel == 3 for n in convs) == 19  # stem + 9 blocks x 2
    assert sum(n.kernel == 1 for n in convs) == 2  # the two stage changes (option B)
    assert sum(n.op == "add" for n in nodes) == 9
    model = models.build("resnet20", 3, models.QuantConfig(3, 4), in_shape=(3, 32, 32))
    assert model.shapes["s3b3add"] == (64, 8, 8)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    model(x)  # sets the quantizer scales
    model.eval()
    assert model(x).shape == (2, 10)
    parse(export.export(model, PIM))


def test_pruning_keeps_residual_channels_tied():
    dense = models.build("resnet20", None, models.QuantConfig(3, 4), in_shape=(3, 32, 32))
    dense.train()
    dense(torch.rand(4, 3, 32, 32))
    groups = compress.tied_groups(dense)
    stage1 = next(g for g in groups if "stem" in g)
    assert sorted(stage1) == sorted(["stem", "s1b1c2", "s1b2c2", "s1b3c2"])
    budget = compress.model_crossbars(dense, PIM) // 4
    pruned = compress.prune(dense, budget, PIM)
    assert compress.model_crossbars(pruned, PIM) <= budget
    width = {n.name: n.out_channels for n in pruned.nodes if n.op == "conv"}
    for g in groups:
        assert len({width[n] for n in g}) == 1, g
    assert width["s3b1c2"] < 64
    pruned.eval()
    assert pruned(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    parse(export.export(pruned, PIM))


def test_augment_crops_and_flips_each_image():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    gen = torch.Generator().manual_seed(1)
    outs = [train.augment(x, gen, pad=0, flip=True) for _ in range(20)]
    for out in outs:
        for i in range(2):
            assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    assert any(not torch.equal(o[0], x[0]) for o in outs)  # some flips happen
    shifted = train.augment(x, gen, pad=4)
    assert shifted.shape == x.shape


def test_reference_runs_large_batches_in_chunks(monkeypatch):
    net = parse(json.loads(_small_resnet_net()))
    x = np.random.default_rng(0).integers(0, 256, (5, *net.input_shape))
    whole = reference.run_network(net, x)
    monkeypatch.setattr(workload, "CHUNK_ELEMENTS", 1)  # one image per chunk
    assert workload.chunk_size(net) == 1
    np.testing.assert_array_equal(reference.run_network(net, x), whole)
    kept = reference.run_network(net, x, keep=True)
    assert kept[net.output].shape[0] == 5


def _small_resnet_net() -> str:
    model = models.build("resnet", 2, models.QuantConfig(3, 4), width=4)
    model.train()
    model(torch.rand(4, 1, 28, 28))
    return json.dumps(export.export(model.eval(), PIM))


@pytest.mark.slow
def test_benchmark_runs_end_to_end_in_process(tmp_path, small_sizes):
    write_batches(tmp_path / "data" / "cifar-10-batches-py")
    out = tmp_path / "out"
    assert cifar.main(["--data-path", str(tmp_path / "data"), "--epochs", "2",
                       "--finetune-epochs", "1", "--ratios", "3", "--batch-size", "20",
                       "--jobs", "1", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "cifar.json").read_text())
    rows = {r["name"]: r for r in result["runs"]}
    assert set(rows) == {"dense-float", "dense-3bit", "epim-r3", "pruned-r3"}
    assert rows["dense-float"]["epochs"] == 3 and rows["epim-r3"]["epochs"] == 1
    # the EPIM model's exported file gives the reported accuracy under the integer reference
    assert cifar.main(["--check", str(out), "--data-path", str(tmp_path / "data")]) == 0
    checked = json.loads((out / "cifar.json").read_text())["reference_check"]
    assert checked["run"] == "epim-r3" and checked["equal"] is True
    assert checked["reference_accuracy"] == rows["epim-r3"]["test_accuracy"]
    assert rows["pruned-r3"]["crossbars"] <= rows["epim-r3"]["crossbars"]
    assert rows["epim-r3"]["compression_vs_dense8"] > 8
    assert "EPIM 3-bit r=3" in (out / "cifar.md").read_text()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_model(tmp_path):
    """DistributedDataParallel with the Gloo backend: two processes, one model."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "epim.app.cli", "train", "--data", "mnist-5k",
           "--limit", "2048", "--test-limit", "500", "--epochs", "3", "--batch-size", "64",
           "--ratio", "2", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["replicas_identical"] is True
    assert m["test_accuracy"] > 0.6
    assert m["integer_vs_fake_quant_agreement"] > 0.99
    parse(json.loads((out / "net.json").read_text()))
    assert r.stdout.count("epoch 1/3:") == 1  # only rank 0 evaluates and reports
