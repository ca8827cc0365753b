"""The PyTorch importer: tracing, refusals, projection, calibration and export (contract v1.1)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epim.sw.chip import netfile, reference
from epim.sw.ml import export, importer, models, resnets
from epim.sw.ml.importer import ModelImportError

PIM = dict(models.DEFAULT_PIM)


@pytest.mark.parametrize("name, params, keys", [("resnet18", 11_689_512, 122),
                                                ("resnet34", 21_797_672, 218),
                                                ("resnet50", 25_557_032, 320)])
def test_resnets_have_torchvisions_structure(name, params, keys):
    """torchvision's parameter counts and state_dict sizes (its saved weights load unchanged)."""
    m = resnets.BUILDERS[name]()
    assert sum(p.numel() for p in m.parameters()) == params
    sd = m.state_dict()
    assert len(sd) == keys
    assert "layer1.0.conv1.weight" in sd and "fc.bias" in sd
    if name == "resnet50":
        assert sd["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
        assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on 3x3


class Tutorial(nn.Module):
    """Everything the importer reads, written the ways users write it."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, bias=True)  # no batch norm: conv bias kept
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 1, bias=True)
        self.b3 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 7 * 7, 16)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.pool(x)
        y = torch.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(y)) + x)  # a signed branch into an add
        x = F.max_pool2d(x, 2)
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _randomise_bn(m: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data = torch.randn(n, generator=g)  # some negative: flipped filters
            mod.bias.data = torch.randn(n, generator=g) * 0.1
            mod.running_mean = torch.randn(n, generator=g) * 0.1
            mod.running_var = torch.rand(n, generator=g) + 0.5


@pytest.mark.parametrize("make, shape", [(Tutorial, (1, 28, 28)),
                                         (lambda: resnets.resnet18(10), (3, 32, 32))])
def test_dense_import_equals_the_module(make, shape):
    torch.manual_seed(0)
    m = make()
    _randomise_bn(m)
    imp = importer.trace(m, shape)
    dense = imp.dense_model(models.QuantConfig(None, None)).double().eval()
    x = torch.rand(4, *shape, dtype=torch.float64)
    with torch.no_grad():
        want = m.double().eval()(x)
        got = dense.fake_quant_forward(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # BN folded in float32


def test_tutorial_graph():
    imp = importer.trace(Tutorial(), (1, 28, 28))
    ops = [(nd.name, nd.op, nd.relu) for nd in imp.nodes]
    assert ops == [("c1", "conv", True), ("pool", "maxpool", True), ("c2", "conv", True),
                   ("c3", "conv", False), ("add", "add", True),
                   ("max_pool2d", "maxpool", True), ("fc1", "linear", True),
                   ("fc2", "linear", False)]


def _seq(*mods):
    return nn.Sequential(*mods)


REFUSED = [
    (_seq(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
     "module '1' (Sigmoid) is not supported"),
    (_seq(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.ReLU(), nn.Flatten(),
          nn.Linear(4 * 24 * 24, 10)), "module '0' (Conv2d): only groups 1, dilation 1"),
    (_seq(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
          nn.Linear(4 * 24 * 24, 10)), "module '0' (Conv2d) has no ReLU and is read by module '2'"),
    (_seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
          nn.Linear(4 * 13 * 13, 10)), "module '2' (MaxPool2d): only dilation 1, floor mode"),
    (_seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
          nn.Linear(16, 10)), "module '2' (AdaptiveAvgPool2d): only output size 1"),
    (_seq(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10), nn.ReLU()),
     "Linear classifier without ReLU"),
]


@pytest.mark.parametrize("module, message", REFUSED)
def test_unsupported_models_are_refused(module, message):
    with pytest.raises(ModelImportError) as err:
        importer.trace(module, (1, 28, 28))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_add_without_relu_is_refused():
    class NoRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, padding=1)
            self.d = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.c(x) + F.relu(self.d(x)), 1))

    with pytest.raises(ModelImportError, match="add .*must be followed by a ReLU"):
        importer.trace(NoRelu(), (1, 28, 28))


def test_unsupported_module_is_refused_before_tracing():
    """A module that would not even trace is refused by name and type first."""
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.GELU()

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.act(x)
            return x

    with pytest.raises(ModelImportError, match=r"module 'act' \(GELU\) is not supported"):
        importer.trace(Weird(), (1, 4, 4))


def test_import_exports_a_faithful_integer_network():
    """Projection, calibration and export: the file's integer reference equals the model's
    integer forward, and its argmax the folded fake-quantized model's (float64)."""
    torch.manual_seed(1)
    m = Tutorial()
    _randomise_bn(m, 1)
    model, report = importer.import_module(m, (1, 28, 28), ratio=2, calib_count=32,
                                           log=lambda s: None)
    assert report["calibration"] == "32 seeded synthetic images (seed 0)"
    assert 0 < report["projection_error_mean"] < 1
    net = netfile.parse(export.export(model, PIM))
    assert net.signed("c3") and [la.op for la in net.layers].count("maxpool") == 2
    assert any(not la.epitome.dense for la in net.layers if la.epitome is not None)
    x = importer.synthetic_images(16, (1, 28, 28), seed=3)
    ref = reference.run_network(net, x.astype(np.int64))
    xt = torch.as_tensor(x, dtype=torch.float32) / 255
    ints = model.integer_forward(xt, keep=True)[model.output].numpy()
    np.testing.assert_array_equal(ref, ints.reshape(len(x), -1))
    import copy

    fq = copy.deepcopy(model).double().folded_fake_quant_forward(xt.double())
    assert (fq.argmax(1).numpy() == ref.argmax(1)).mean() >= 0.9


def test_epitomes_from_a_search_json(tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"best": {"layers": {
        "layer1.0.conv1": {"ce_in": 16, "ce_out": 32, "p_in": 16, "p_out": 32, "d_r": 0,
                           "bits": 3}}}}))
    imp = importer.trace(resnets.resnet18(10), (3, 32, 32))
    nodes = importer.with_epitomes(imp, genes=importer.read_epitomes(path, imp.nodes))
    by = {nd.name: nd for nd in nodes}
    assert by["layer1_0_conv1"].epitome == (16, 32, 16, 32)
    assert by["layer1_0_conv2"].epitome is None  # not named: dense
    path.write_text(json.dumps({"layers": {"nope": {"ce_in": 1, "ce_out": 1, "p_in": 1,
                                                    "p_out": 1}}}))
    with pytest.raises(ModelImportError, match="layer 'nope' is not a conv or linear layer"):
        importer.read_epitomes(path, imp.nodes)


@pytest.mark.slow
def test_cli_import_refuses_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("import torch\ndef make():\n    return torch.nn.Sequential("
                   "torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh())\n")
    for args, message in [
            (["nosuchnet"], "give one of resnet18, resnet34, resnet50, FILE.py:FUNCTION"),
            ([f"{bad}:make", "--input-shape", "1", "8", "8"],
             "module '1' (Tanh) is not supported"),
            ([f"{bad}:other"], "defines no function 'other'"),
            (["resnet18", "--state-dict", str(bad)], "not a state_dict file")]:
        proc = subprocess.run([sys.executable, "-m", "epim.app.cli", "import", *args, "--out",
                               str(tmp_path / "out")], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_standard_block_resnet_round_trips():
    """The built-in ResNet with standard blocks exports signed branches the reference runs
    exactly as the model's integer forward."""
    torch.manual_seed(0)
    m = models.build("resnet", 4, width=8, block="standard")
    x = torch.rand(8, 1, 28, 28)
    m.train()
    m(x)
    m.eval()
    net = netfile.parse(export.export(m, PIM))
    assert sum(not la.relu for la in net.layers) == 6  # 4 second convs, 1 shortcut, logits
    ref = reference.run_network(net, (x * 255).round().long().numpy())
    np.testing.assert_array_equal(ref, m.integer_forward(x, keep=True)["fc"].flatten(1).numpy())


@pytest.mark.parametrize("name, block", [("cnn", "relu"), ("resnet", "relu"),
                                         ("resnet", "standard")])
def test_the_projects_own_models_import(name, block):
    """A float model of `epim train` imports with its own graph, names and forward."""
    torch.manual_seed(0)
    m = models.build(name, None, models.QuantConfig(None, None), width=8, block=block)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    imp = importer.trace(m, (1, 28, 28))
    def ops(nodes):
        return [(n.name, n.op, n.relu if n.op == "conv" else None) for n in nodes]

    assert ops(imp.nodes) == ops(m.nodes)
    dense = imp.dense_model(models.QuantConfig(None, None)).double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(dense.fake_quant_forward(x),
                                   m.double().eval().fake_quant_forward(x))
