"""Memory images: the packed words decode back to the spec's crossbar matrix and tables."""

from __future__ import annotations

import json

from epim.contract.images import ubits
from epim.sw.chip import epitome, examples, images, netfile


def field(word, i, width):
    return (word >> (i * width)) & (2**width - 1)


def test_crossbar_words_hold_the_epitome_matrix(rng):
    obj = examples.conv_layer_net(rng, cin=5, cout=6, epitome=(3, 5, 2, 3), weight_bits=4,
                                  offsets="random",
                                  pim=dict(examples.EXAMPLE_PIM, cell_bits=2))
    net = netfile.parse(obj)
    layer = net.layers[0]
    img = images.compile_layer(net, layer)
    p = img.params
    ns, cb, ce_out = p.n_slices, p.cell_bits, p.ce_out
    assert ns == 2
    e = layer.epitome.weights
    for rho, word in enumerate(img.words["xbar"]):
        e_in, kk = divmod(rho, 9)
        for e_out in range(ce_out):
            mag = [sum(field(word, (pol * ce_out + e_out) * ns + q, cb) << (q * cb)
                       for q in range(ns)) for pol in range(2)]
            assert mag[0] - mag[1] == e[e_out, e_in, kk // 3, kk % 3]
            assert min(mag) == 0  # one polarity only


def test_tables_follow_the_steps(rng):
    obj = examples.conv_layer_net(rng, cin=7, cout=9, epitome=(4, 5, 3, 2), offsets="random")
    net = netfile.parse(obj)
    layer = net.layers[0]
    img = images.compile_layer(net, layer)
    p = img.params
    steps = epitome.steps(layer.epitome)
    assert p.n_steps == len(steps) and p.max_steps == p.g_in * p.g_out
    for n, st in enumerate(steps):
        word = img.words["ifrt"][n]
        assert word & 1 == (n == len(steps) - 1)
        assert field(word >> 1, 0, p.g_out) == sum(1 << go for go in st.reuse)
        assert word >> (1 + p.g_out) == st.gi
        src = epitome.ifat_sources(layer.epitome, 7, st)
        fw = 1 + p.src_bits
        for e_in, s in enumerate(src):
            f = field(img.words["ifat"][n], e_in, fw)
            assert f == (0 if s < 0 else (s << 1) | 1)
    assert all(w == 0 for w in img.words["ifrt"][len(steps):])
    cw = ubits(p.ce_out)
    for gi, word in enumerate(img.words["ofat"]):
        assert [field(word, go, cw) for go in range(p.g_out)] == \
            layer.epitome.col_offset[gi].tolist()


def test_output_stage_words(net_obj):
    net_obj["layers"][0]["bias"][3] = -5
    net = netfile.parse(net_obj)
    img = images.compile_layer(net, net.layers[0])
    word = img.words["ostage"][3]
    assert word & (2**32 - 1) == 2**32 - 5
    assert (word >> 32) & (2**31 - 1) == net.layers[0].mult[3]
    assert word >> 63 == net.layers[0].shift[3]


def test_manifest_and_hex_files(tmp_path, net_obj):
    net = netfile.parse(net_obj)
    img = images.compile_layer(net, net.layers[0])
    images.write_images(img, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "epim-images-v1"
    for name in images.MEMORIES:
        entry = manifest["memories"][name]
        lines = (tmp_path / entry["file"]).read_text().splitlines()
        assert len(lines) == entry["depth"] == len(img.words[name])
        assert [int(v, 16) for v in lines] == img.words[name]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_crossbar_count_formula(net_obj):
    layer = netfile.parse(net_obj).layers[0]
    # epitome rows 4*9=36, cols 8*1: one row chunk, one column block, two polarities
    assert epitome.crossbar_count(layer, 2, 128, 128) == 2
    assert epitome.crossbar_count(layer, 2, 16, 4) == 3 * 2 * 2
    assert epitome.crossbar_count(layer, 2, 16, 4, dense=True) == 5 * 4 * 2
