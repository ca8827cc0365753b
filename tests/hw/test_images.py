"""The hardware side refuses corrupted or mismatched memory images, naming the file."""

from __future__ import annotations

import json

import pytest

from epim.contract.images import canonical, sha256_text
from epim.hw import images as hw_images
from epim.sw.chip import images, netfile


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


@pytest.mark.parametrize("name", ["../xbar.hex", "/etc/passwd", "sub/xbar.hex", 7, "xbar.txt"])
def test_manifest_file_names_stay_in_the_folder(image_dir, name):
    """A manifest is data a user may have edited: its file names never leave its folder."""
    mpath = image_dir / "manifest.json"
    man = json.loads(mpath.read_text())
    man["memories"]["xbar"]["file"] = name
    mpath.write_text(json.dumps(man))
    with pytest.raises(hw_images.ImageError, match="is not a hex file name in the manifest"):
        hw_images.load(image_dir)


def test_a_negative_hex_word_is_refused(tmp_path):
    path = tmp_path / "w.hex"
    path.write_text("1\n-1\n")
    with pytest.raises(hw_images.ImageError, match=r"w.hex:2: not a hex word: '-1'"):
        hw_images.read_hex(path, 4, 2)


def test_network_units_are_checked_before_use(tmp_path):
    from epim.hw.network import load_network
    from epim.sw.chip import examples

    net = netfile.parse(examples.random_network_net(0))
    images.write_network(images.compile_network(net), tmp_path)
    mpath = tmp_path / "network.json"
    good = json.loads(mpath.read_text())
    for units, want in [(["x"], "unit #0 must be an object"),
                        ([{"folder": "tiles/stem"}], "unit #0 must be an object"),
                        ([{**good["units"][0], "folder": "../../elsewhere"}],
                         "'folder' must be 'tiles/")]:
        man = dict(good, units=units)
        man["units_sha256"] = sha256_text(canonical(units))
        man["sha256"] = images.manifest_digest(man)
        mpath.write_text(json.dumps(man))
        with pytest.raises(hw_images.ImageError, match=want):
            load_network(tmp_path)


@pytest.mark.parametrize("edit", [("input", "bits", 7), ("output", "bits", 9),
                                  ("reuse", None, False), ("lanes", None, 3)])
def test_every_field_of_the_network_manifest_is_checksummed(tmp_path, edit):
    from epim.hw.network import load_network
    from epim.sw.chip import examples

    net = netfile.parse(examples.random_network_net(0))
    images.write_network(images.compile_network(net), tmp_path)
    mpath = tmp_path / "network.json"
    man = json.loads(mpath.read_text())
    key, sub, value = edit
    if sub:
        man[key][sub] = value
    else:
        man[key] = value
    mpath.write_text(json.dumps(man))
    with pytest.raises(hw_images.ImageError, match="does not match its 'sha256'"):
        load_network(tmp_path)
