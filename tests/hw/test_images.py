"""The hardware side refuses corrupted or mismatched memory images, naming the file."""

from __future__ import annotations

import json

import pytest

from epim.hw import images as hw_images
from epim.sw import images, netfile


@pytest.fixture
def image_dir(tmp_path, net_obj):
    net = netfile.parse(net_obj)
    images.write_images(images.compile_layer(net, net.layers[0]), tmp_path)
    return tmp_path


def test_loads_what_software_packed(image_dir, net_obj):
    loaded = hw_images.load(image_dir)
    net = netfile.parse(net_obj)
    assert loaded.words == images.compile_layer(net, net.layers[0]).words


def test_corrupted_word_is_refused(image_dir):
    path = image_dir / "xbar.hex"
    lines = path.read_text().splitlines()
    lines[3] = f"{int(lines[3], 16) ^ 1:0{len(lines[3])}x}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(hw_images.ImageError, match=r"xbar.hex: checksum mismatch"):
        hw_images.load(image_dir)


def test_missing_file_is_refused(image_dir):
    (image_dir / "ofat.hex").unlink()
    with pytest.raises(hw_images.ImageError, match=r"ofat.hex: cannot read"):
        hw_images.load(image_dir)


def test_edited_params_are_refused(image_dir):
    mpath = image_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["params"]["acc_bits"] -= 4
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(hw_images.ImageError, match=r"'params' do not match"):
        hw_images.load(image_dir)


def test_mismatched_width_is_refused(image_dir):
    mpath = image_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["memories"]["ifat"]["width"] += 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(hw_images.ImageError, match=r"memory 'ifat' width"):
        hw_images.load(image_dir)
