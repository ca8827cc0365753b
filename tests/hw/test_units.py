"""Each unit of the tile on its own in Amaranth's simulator, against the spec's arithmetic:
the loader and window gather, the IFRT sequencer, the IFAT row selection, the crossbar (DAC
slices, cells, ADC, shift-and-add), the OFAT routing and accumulation, and the adder trees.
(`test_ostage.py` has the output stage; `test_tile.py` the units together.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import Cat, ClockDomain, Const, Module, Signal, signed
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract.images import ifat_fields, ofat_fields, ubits, unpack
from epim.hw import arith, crossbar, gather, ofat, sequencer
from epim.sw.chip import epitome, examples, images, netfile, reference

LOSSY = dict(xbar_rows=8, xbar_cols=8, cell_bits=2, dac_bits=2, adc_bits=3)
LINEAR = dict(xbar_rows=8, xbar_cols=8, cell_bits=1, dac_bits=1, adc_bits=4)


def layer_image(rng, lanes=None, pim=None, **kw):
    kw = {"cin": 3, "cout": 5, "h": 4, "w": 4, "epitome": (2, 3, 2, 2), "offsets": "random",
          "in_bits": 3, **kw}
    net = netfile.parse(examples.conv_layer_net(rng, pim=pim or examples.DEFAULT_PIM, **kw))
    return net, images.compile_layer(net, net.layers[0], lanes=lanes)


def run(m: Module, bench) -> None:
    m.domains.sync = ClockDomain()
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def rom(m: Module, name: str, width: int, words: list[int]):
    mem = Memory(shape=width, depth=len(words), init=words)
    m.submodules[name] = mem
    return mem.read_port(domain="comb")


def test_loader_fills_a_bank_and_gather_reads_each_window(rng):
    """An image's beats fill bank 0; for every output pixel the gather's k+1 phases leave the
    zero-padded k x k window in `g_window_next`."""
    _, img = layer_image(rng, stride=2, h=5, w=5)
    cfg = img.params
    k, bits = cfg.kernel, cfg.in_bits
    x = rng.integers(0, 2**bits, (cfg.cin, cfg.h, cfg.w))
    m = Module()
    port = SimpleNamespace(valid=Signal(), ready=Signal(), payload=Signal(cfg.cin * bits))
    ld = gather.load_input(m, cfg, port)
    s = SimpleNamespace(stall=Signal(), s_g=Signal(), g_phase=Signal(range(k + 1)),
                        g_oy=Signal(range(cfg.ho)), g_ox=Signal(range(cfg.wo)), g_end=Signal(),
                        wv=sequencer.walk_values(cfg))
    m.d.comb += s.g_end.eq(~s.s_g | (s.g_phase == k))
    g = gather.window_gather(m, cfg, ld.ifm, s, None)
    padded = np.pad(x, ((0, 0), (cfg.padding,) * 2, (cfg.padding,) * 2))

    async def bench(ctx):
        for y in range(cfg.h):
            for xx in range(cfg.w):
                ctx.set(port.payload, sum(int(v) << (c * bits) for c, v in enumerate(x[:, y, xx])))
                ctx.set(port.valid, 1)
                assert ctx.get(port.ready)
                await ctx.tick()
        ctx.set(port.valid, 0)
        await ctx.tick()
        assert ctx.get(ld.full) == 0b01
        for oy in range(cfg.ho):
            for ox in range(cfg.wo):
                ctx.set(s.g_oy, oy)
                ctx.set(s.g_ox, ox)
                ctx.set(g.g_base, (oy * cfg.stride - cfg.padding) * cfg.w
                        + ox * cfg.stride - cfg.padding)
                ctx.set(s.g_phase, 0)
                ctx.set(s.s_g, 1)
                for _ in range(k + 1):
                    await ctx.tick()
                want = padded[:, oy * cfg.stride:oy * cfg.stride + k,
                              ox * cfg.stride:ox * cfg.stride + k]
                for kh in range(k):
                    for kw in range(k):
                        word = ctx.get(g.g_window_next[kh][kw])
                        got = [(word >> (c * bits)) & (2**bits - 1) for c in range(cfg.cin)]
                        assert got == want[:, kh, kw].tolist(), (oy, ox, kh, kw)
                ctx.set(s.s_g, 0)

    run(m, bench)


@pytest.mark.parametrize("lanes", [None, 1])
def test_sequencer_walks_steps_slices_and_passes(rng, lanes):
    """Within a pixel: every IFRT step up to the `last` one, each in `n_t` DAC slices from the
    most significant, each in `passes` passes; then the pixel is done."""
    _, img = layer_image(rng, lanes=lanes, pim=LOSSY)
    cfg = img.params
    if lanes:
        assert cfg.passes > 1
    m = Module()
    ifrt = rom(m, "ifrt", cfg.widths["ifrt"], img.words["ifrt"])
    ifat = rom(m, "ifat", cfg.widths["ifat"], img.words["ifat"])
    s = sequencer.slot_control(m, cfg, ifrt, ifat, None)
    sequencer.step_sequencer(m, cfg, s)
    want = [(n, t, p) for n in range(cfg.n_steps) for t in reversed(range(cfg.n_t))
            for p in range(cfg.passes)]

    async def bench(ctx):
        ctx.set(s.s_x, 1)
        seen = []
        for _ in range(len(want) + 5):
            if ctx.get(s.x_done):
                break
            seen.append((ctx.get(s.x_step), ctx.get(s.x_t), ctx.get(s.x_p)))
            await ctx.tick()
        assert seen == want
        assert ctx.get(s.x_done)

    run(m, bench)


@pytest.mark.parametrize("fixed", [False, True], ids=["programmable", "fixed"])
def test_ifat_rows_take_the_channels_the_step_names(rng, fixed):
    _, img = layer_image(rng, cin=5, epitome=(3, 4, 2, 2))
    cfg = img.params
    k, bits = cfg.kernel, cfg.in_bits
    m = Module()
    ifat = rom(m, "ifat", cfg.widths["ifat"], img.words["ifat"])
    x_step = Signal(range(cfg.max_steps))
    m.d.comb += ifat.addr.eq(x_step)
    window = [[Signal(cfg.cin * bits, name=f"w_{kh}_{kw}") for kw in range(k)]
              for kh in range(k)]
    rows = sequencer.ifat_rows(m, cfg, ifat, window, x_step, img.words, fixed)
    values = rng.integers(0, 2**bits, (k, k, cfg.cin))

    async def bench(ctx):
        for kh in range(k):
            for kw in range(k):
                ctx.set(window[kh][kw], sum(int(v) << (c * bits)
                                            for c, v in enumerate(values[kh, kw])))
        for n, word in enumerate(img.words["ifat"][:cfg.n_steps]):
            ctx.set(x_step, n)
            f = unpack(ifat_fields(cfg), word)
            for e_in in range(cfg.ce_in):
                for kh in range(k):
                    for kw in range(k):
                        got = ctx.get(rows[(e_in * k + kh) * k + kw])
                        want = (values[kh, kw, f[f"src{e_in}"]] if f[f"active{e_in}"] else 0)
                        assert got == want, (n, e_in, kh, kw)

    run(m, bench)


CROSSBARS = {"programmable": (False, None, LOSSY), "fixed-adc": (True, None, LOSSY),
             "fixed-adc-lanes": (True, 1, LOSSY), "fixed-linear": (True, None, LINEAR),
             "fixed-linear-lanes": (True, 1, LINEAR)}


@pytest.mark.parametrize("case", CROSSBARS)
def test_crossbar_column_values_follow_the_spec(rng, case):
    """The step's column values for random row inputs equal the spec's crossbar arithmetic
    (DAC slices, ADC saturation per chunk, slice and polarity, shift-and-add)."""
    fixed, lanes, pim = CROSSBARS[case]
    net, img = layer_image(rng, lanes=lanes, pim=pim, cin=5, epitome=(4, 3, 3, 3))
    cfg = img.params
    layer = net.layers[0]
    m = Module()
    x_rows = [Signal(cfg.in_bits, name=f"row_{r}") for r in range(cfg.rows)]
    s = SimpleNamespace(stall=Signal(), x_t=Signal(range(cfg.n_t)), x_p=Signal(range(cfg.passes)),
                        s_x=Signal(), x_done=Signal(), n_pass=cfg.passes, x_step_end=Signal(),
                        ifrt_last=Signal(), ifrt_mask=Signal(cfg.g_out),
                        ifrt_gi=Signal(ubits(cfg.g_in)))
    cells = [Const(w, cfg.widths["xbar"]) for w in img.words["xbar"]]
    xb = crossbar.crossbar(m, cfg, x_rows, s, cells, img.words, fixed)
    slices = reference.crossbar_slices(layer, cfg.cell_bits)

    async def bench(ctx):
        for _ in range(4):
            x = rng.integers(0, 2**cfg.in_bits, cfg.rows)
            want = reference.crossbar_activation(x[None, :], slices, net.pim, cfg.in_bits)[0]
            for r, v in enumerate(x):
                ctx.set(x_rows[r], int(v))
            ctx.set(s.s_x, 1)
            got = None
            for t in reversed(range(cfg.n_t)):
                for p in range(cfg.passes):
                    ctx.set(s.x_t, t)
                    ctx.set(s.x_p, p)
                    ctx.set(s.x_step_end, t == 0 and p == cfg.passes - 1)
                    await ctx.tick()
            ctx.set(s.s_x, 0)
            ctx.set(s.x_step_end, 0)
            for _ in range(3):
                if ctx.get(xb.p.p_step_end):
                    got = [ctx.get(v) for v in xb.p.x_col_next]
                    break
                await ctx.tick()
            assert got == want.tolist()
            await ctx.tick()

    run(m, bench)


def test_ofat_accumulates_each_channel_from_its_wrapped_column(rng):
    """Over a pixel's steps each output channel adds column `(OFAT[gi][go] + j) mod Ce_out`
    of the steps that serve its group; the last step hands the sums on (`q_acc`)."""
    _, img = layer_image(rng, cin=6, cout=7, epitome=(3, 3, 2, 2))
    cfg = img.params
    for fixed in (False, True):
        m = Module()
        acc_shape = signed(cfg.acc_bits)
        p = SimpleNamespace(x_col_next=[Signal(acc_shape, name=f"c{e}") for e in range(cfg.ce_out)],
                            p_step_end=Signal(), p_last=Signal(), p_mask=Signal(cfg.g_out),
                            p_gi=Signal(ubits(cfg.g_in)))
        port = rom(m, "ofat", cfg.widths["ofat"], img.words["ofat"])
        stall = Signal()
        r = ofat.route(m, cfg, p, port, stall)
        q = ofat.accumulate(m, cfg, r, port, img.words, fixed, {}, {}, stall)
        steps = [(int(rng.integers(cfg.g_in)), int(rng.integers(2**cfg.g_out)),
                  rng.integers(-50, 50, cfg.ce_out)) for _ in range(5)]
        want = [0] * cfg.cout
        for gi, mask, cols in steps:
            base = unpack(ofat_fields(cfg), img.words["ofat"][gi])
            for o in range(cfg.cout):
                go, j = divmod(o, cfg.patch_out)
                if mask >> go & 1:
                    want[o] += int(cols[(base[f"base{go}"] + j) % cfg.ce_out])

        async def bench(ctx, q=q, p=p, steps=steps, want=want):
            for n, (gi, mask, cols) in enumerate(steps):
                ctx.set(p.p_gi, gi)
                ctx.set(p.p_mask, mask)
                ctx.set(p.p_last, n == len(steps) - 1)
                ctx.set(p.p_step_end, 1)
                for e, v in enumerate(cols):
                    ctx.set(p.x_col_next[e], int(v))
                await ctx.tick()
            ctx.set(p.p_step_end, 0)
            await ctx.tick()
            await ctx.tick()
            assert [ctx.get(a) for a in q.q_acc] == want

        run(m, bench)


@settings(max_examples=40, deadline=None)
@given(columns=st.dictionaries(st.integers(0, 6), st.lists(st.integers(0, 1), max_size=9),
                               max_size=6),
       late=st.integers(0, 2**10 - 1))
def test_bit_sum_and_tree_sum_add_exactly(columns, late):
    """`bit_sum` (carry-save, with a pipeline register and a late word) and `tree_sum` (words)
    give the sums modulo their width."""
    width = 10
    m = Module()
    bits = {w: [Signal(name=f"b{w}_{i}") for i in range(len(v))] for w, v in columns.items()}
    regs = []

    def register(bit):
        r = Signal(name=f"r{len(regs)}")
        m.d.sync += r.eq(bit)
        regs.append(r)
        return r

    late_sig = Signal(width)
    total = Signal(width)
    plain = Signal(width)
    m.d.comb += [total.eq(arith.bit_sum(m, bits, width, "t", register, late=late_sig)),
                 plain.eq(arith.tree_sum([Cat(b) for bs in bits.values() for b in bs] or [0],
                                         width))]
    want = (sum(v << w for w, vs in columns.items() for v in vs) + late) % 2**width

    async def bench(ctx):
        for w, vs in columns.items():
            for sig, v in zip(bits[w], vs, strict=True):
                ctx.set(sig, v)
        ctx.set(late_sig, late)
        await ctx.tick()
        assert ctx.get(total) == want
        assert ctx.get(plain) == sum(sum(vs) for vs in columns.values()) % 2**width

    run(m, bench)


def test_ge_const_compares_every_value():
    m = Module()
    v = Signal(signed(6))
    outs = {c: Signal(name=f"ge_{c + 40}") for c in range(-40, 40, 3)}
    for c, o in outs.items():
        m.d.comb += o.eq(arith.ge_const(v, c))

    async def bench(ctx):
        for a in range(-32, 32):
            ctx.set(v, a)
            await ctx.delay(1e-9)
            assert all(ctx.get(o) == (a >= c) for c, o in outs.items()), a

    run(m, bench)


def test_steps_of_the_images_are_the_spec_steps(rng):
    """(the sequencer test's premise) the IFRT image holds the spec's steps, `last` on the
    final one."""
    net, img = layer_image(rng)
    assert img.params.n_steps == len(epitome.steps(net.layers[0].epitome))


@pytest.mark.parametrize("signs", [(False, False), (True, False), (True, True)])
def test_add_unit_reads_signed_inputs_as_twos_complement(rng, signs):
    """The residual adder (contract v1.1): an input whose producer has no ReLU is two's
    complement; `clamp((a*ma + b*mb + rnd) >> shift)` per channel, negative sums included."""
    from amaranth.sim import Simulator

    from epim.hw.units import AddUnit, scale_clamped

    c, ab, bb, ob, shift = 3, 4, 5, 3, 2
    negative = False
    for ma, mb in ((3, 1), (5, -2), (-1, 7)):
        unit = AddUnit(c, ab, bb, ob, ma, mb, shift, *signs)
        vals = []
        for bits, signed_ in zip((ab, bb), signs, strict=True):
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed_ else (0, 2**bits)
            vals.append(rng.integers(lo, hi, (40, c)))
        a, b = vals
        got = []

        async def bench(ctx, a=a, b=b, got=got, unit=unit):
            ctx.set(unit.o.ready, 1)
            for n in range(len(a)):
                ctx.set(unit.a.payload, sum((int(v) % 2**ab) << (i * ab)
                                            for i, v in enumerate(a[n])))
                ctx.set(unit.b.payload, sum((int(v) % 2**bb) << (i * bb)
                                            for i, v in enumerate(b[n])))
                ctx.set(unit.a.valid, 1)
                ctx.set(unit.b.valid, 1)
                await ctx.tick()
                got.append(ctx.get(unit.o.payload))

        sim = Simulator(unit)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        mask = 2**ob - 1
        y = np.array([[(w >> (i * ob)) & mask for i in range(c)] for w in got])
        # the formula of `scale_clamped` with multiplier 1: clamp((a*ma + b*mb + rnd) >> shift)
        want = np.vectorize(lambda s, hi=mask: scale_clamped(int(s), 1, shift, hi))(a * ma + b * mb)
        np.testing.assert_array_equal(y, want)
        negative |= bool((a * ma + b * mb < 0).any())
    if any(signs):
        assert negative
