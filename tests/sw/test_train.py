"""Training on a small MNIST subset: export agreement, determinism, resume, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from epim.app.cli import main
from epim.sw.chip import data, netfile, reference
from epim.sw.ml import train

SMALL = dict(data="mnist-5k", model="cnn", ratio=2.0, width=8, epochs=2, limit=2048,
             test_limit=200, batch_size=64)


@pytest.mark.slow  # over 5 s
def test_trained_model_exports_and_integer_reference_agrees(tmp_path):
    metrics = train.fit(train.Config(**SMALL), tmp_path, log=lambda *_: None)
    net = netfile.load(tmp_path / "net.json")
    x, y = data.load("mnist-5k", "test", 200)
    logits = reference.run_network(net, x.astype(np.int64))
    pred = logits.argmax(1)
    np.testing.assert_array_equal(pred, np.load(tmp_path / "predictions.npy"))
    assert float((pred == y).mean()) == metrics["test_accuracy"]
    assert metrics["test_accuracy"] > 0.15  # above chance (0.1) after 64 steps
    assert metrics["history"][1]["loss"] < metrics["history"][0]["loss"]
    assert metrics["compression_vs_dense8"] > 1
    assert metrics["integer_vs_fake_quant_agreement"] >= 0.995  # at most 1 of 200 differs
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["crossbars"] == metrics["crossbars"]


@pytest.mark.slow  # over 5 s
def test_same_seed_same_network_and_resume(tmp_path):
    cfg = train.Config(**SMALL)
    train.fit(cfg, tmp_path / "a", log=lambda *_: None)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        train.fit(cfg, tmp_path / "b", log=stop_after_first_epoch)
    lines = []
    train.fit(cfg, tmp_path / "b", log=lines.append)
    assert lines[0].startswith("resuming from epoch 1")
    assert (tmp_path / "a" / "net.json").read_text() == (tmp_path / "b" / "net.json").read_text()


def test_float_model_trains_without_export(tmp_path):
    cfg = train.Config(**dict(SMALL, weight_bits=None, act_bits=None, epochs=1))
    metrics = train.fit(cfg, tmp_path, log=lambda *_: None)
    assert "crossbars" not in metrics and not (tmp_path / "net.json").exists()


def test_train_and_reference_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "mnist-5k", "--limit", "256", "--test-limit", "100",
                 "--epochs", "1", "--width", "8", "--out", str(out)]) == 0
    assert "fewer than dense 8-bit" in capsys.readouterr().out
    assert main(["data", "mnist-5k", "--split", "test", "--limit", "100", "--images",
                 str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]) == 0
    assert main(["reference", str(out / "net.json"), "--inputs", str(tmp_path / "x.npy"),
                 "--outputs", str(tmp_path / "logits.npy"), "--labels",
                 str(tmp_path / "y.npy")]) == 0
    acc = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert f"accuracy {acc:.4f} on 100 images" in capsys.readouterr().out


def test_noise_aware_training_and_a_noisy_reference_from_the_cli(tmp_path, capsys):
    """`epim train --noise` trains on noisy chips and records the configuration; the export
    is the ideal integer network, which `epim reference --noise` then runs on a noisy chip."""
    cfg = tmp_path / "noise.json"
    cfg.write_text(json.dumps({"format": "epim-noise-v1", "programming": {"sigma": 0.05},
                               "stuck_at": {"zero": 0.01}}))
    out = tmp_path / "run"
    assert main(["train", "--data", "mnist-5k", "--limit", "256", "--test-limit", "100",
                 "--epochs", "1", "--width", "8", "--out", str(out), "--noise", str(cfg)]) == 0
    assert "noise-aware training" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["noise"]["programming"]["sigma"] == 0.05
    assert main(["data", "mnist-5k", "--split", "test", "--limit", "100", "--images",
                 str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]) == 0
    args = ["reference", str(out / "net.json"), "--inputs", str(tmp_path / "x.npy"),
            "--labels", str(tmp_path / "y.npy")]
    assert main([*args, "--outputs", str(tmp_path / "ideal.npy")]) == 0
    assert main([*args, "--outputs", str(tmp_path / "noisy.npy"), "--noise", str(cfg),
                 "--seed", "1"]) == 0
    assert "non-idealities" in capsys.readouterr().out
    assert (np.load(tmp_path / "ideal.npy") != np.load(tmp_path / "noisy.npy")).any()
