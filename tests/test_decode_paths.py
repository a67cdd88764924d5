"""The reader's fast decode paths give the bits of the straightforward ones: the slice
form of the interpolation predictor against the gather form of its definition, table
unzigzag against the arithmetic, partial and concurrent decodes against serial full ones."""
from __future__ import annotations

import numpy as np
import pytest

from neurvol.compress import interp
from neurvol.compress.lorenzo import unzigzag, zigzag


def _gather_predict(view, axis, h):
    """The predictor as spec/payload.md §2.2.8 states it: gathers and selects."""
    ax = view.ndim - 3 + axis
    n = view.shape[ax]
    p = np.arange(h, n, 2 * h)

    def at(idx):
        return np.take(view, np.clip(idx, 0, n - 1), axis=ax)

    shape = [1] * view.ndim
    shape[ax] = p.size
    cubic = ((p - 3 * h >= 0) & (p + 3 * h < n)).reshape(shape)
    linear = (p + h < n).reshape(shape)
    a, b, c, d = at(p - 3 * h), at(p - h), at(p + h), at(p + 3 * h)
    pred = np.where(cubic, (9.0 * (b + c) - (a + d)) / 16.0,
                    np.where(linear, (b + c) / 2.0, b))
    sel = [slice(None)] * view.ndim
    sel[ax] = slice(h, None, 2 * h)
    return pred, tuple(sel)


@pytest.mark.parametrize("shape", [(2, 2, 2), (3, 5, 7), (1, 9, 4, 13), (2, 1, 17, 3, 2),
                                   (2, 1, 12, 12, 12), (1, 33, 6, 65), (4, 3, 1), (3, 2, 3, 5),
                                   (5, 4, 4), (2, 3, 7, 6), (1, 2, 5, 6, 8), (6, 5, 9),
                                   (2, 1, 9, 8, 10), (1, 1, 13, 11, 37)])
def test_interp_slices_equal_gathers(shape, monkeypatch):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 5
    for step in (0.01, 0.7):
        codes, rec = interp.interp_encode(x, step)
        decoded = interp.interp_decode(codes, shape, step)
        with monkeypatch.context() as m:
            m.setattr(interp, "_predict", _gather_predict)
            ref_codes, ref_rec = interp.interp_encode(x, step)
            ref_decoded = interp.interp_decode(ref_codes, shape, step)
        np.testing.assert_array_equal(codes, ref_codes)
        assert rec.tobytes() == ref_rec.tobytes()
        assert decoded.tobytes() == ref_decoded.tobytes() == rec.tobytes()


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 3, 4, 5), (1, 1, 6, 7, 9), (3, 8, 8, 8),
                                   (2, 1, 11, 10, 2), (1, 1, 16, 16, 15)])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_interp_from_symbols_equals_the_int64_codes_path(shape, width):
    """The record's fused path (symbols -> codes times the step -> prediction passes,
    the last in flat form) gives the bits of the plain one (int64 codes, then every
    pass by slices), for every symbol width and for odd and even last axes."""
    from neurvol.compress.methods.interp import Interp

    rng = np.random.default_rng(width * 100 + len(shape))
    top = {1: 120, 2: 30000, 4: 1 << 30}[width]
    codes = rng.integers(-top // 2, top // 2, int(np.prod(shape)))
    z = zigzag(codes).astype(f"<u{width}")
    for step in (1e-3, 0.37, 3.0e5):
        fused = Interp.reconstruct_symbols(z, shape, step)
        plain = Interp.reconstruct(unzigzag(z), shape, step)
        assert fused.dtype == np.float32 and fused.tobytes() == plain.tobytes()
        # ... and both are the spec's passes, every one by slices (no flat last pass).
        ref = _passes_by_slices(codes, shape, step)
        assert plain.tobytes() == ref.astype(np.float32).reshape(-1).tobytes()


def _passes_by_slices(codes, shape, step):
    """spec/payload.md §2.2.8 with every pass through ``interp._predict`` (the decode
    before the flat last pass)."""
    rec = np.zeros(shape)
    pos = 0

    def take(pred):
        nonlocal pos
        pred += codes[pos:pos + pred.size].reshape(pred.shape) * step
        pos += pred.size
        return pred

    anchor = interp._anchor(shape)
    rec[anchor] = take(np.zeros_like(rec[anchor]))
    for axis, h, sel in interp.prediction_passes(shape):
        view = rec[sel]
        pred, psel = interp._predict(view, axis, h)
        view[psel] = take(pred)
    assert pos == codes.size
    return rec


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unzigzag_scaled_equals_unzigzag_times_step(dtype):
    from neurvol.compress.lorenzo import unzigzag_scaled

    info = np.iinfo(dtype)
    r = np.random.default_rng(1).integers(-(1 << 20), 1 << 20, 10_000)
    z = zigzag(r)
    z = np.concatenate([z[z <= info.max], [0, 1, 2, min(info.max, (1 << 62))]]).astype(dtype)
    for step in (5e-324, 1e-3, 0.1, 7.0, 1e300):
        with np.errstate(over="ignore"):
            want = unzigzag(z) * step
            got = unzigzag_scaled(z, step)
        assert got.dtype == np.float64 and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unzigzag_table_equals_arithmetic(dtype):
    info = np.iinfo(dtype)
    r = np.random.default_rng(0).integers(-(1 << 20), 1 << 20, 10_000)
    z = zigzag(r)
    z = np.concatenate([z[z <= info.max], [0, 1, 2, min(info.max, (1 << 64) - 1)]]).astype(dtype)
    got = unzigzag(z)
    u = z.astype(np.uint64)
    want = (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    got[...] = 7                      # a fresh array: the lookup table is untouched
    np.testing.assert_array_equal(unzigzag(z), want)


def test_correction_blocks_decode_the_same_on_threads():
    """Groups of blocks decoded on several threads give the serial decode's bits, in the
    serial order (mixed block shapes: the volume is not a multiple of the block)."""
    from neurvol.compress.correction import CorrectionStream, encode_correction

    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in (21, 18, 19)), indexing="ij")
    vol = (np.sin(z) * np.cos(y) + 0.1 * x + 0.02 * rng.standard_normal(z.shape)).astype(np.float32)
    data, _ = encode_correction(vol, 1e-3, block=8)
    stream = CorrectionStream(data, vol.shape, vol.dtype)
    ids = list(range(stream.nblocks))[::-1]
    serial = stream.decode_blocks(ids)
    threaded = stream.decode_blocks(ids, threads=3)
    assert len(threaded) > 2                       # the groups were split across threads
    assert [i for d in serial for i in d.ids] == [i for d in threaded for i in d.ids]
    a = {i: d.values(j, None, vol.dtype) for d in serial for j, i in enumerate(d.ids)}
    b = {i: d.values(j, None, vol.dtype) for d in threaded for j, i in enumerate(d.ids)}
    assert all(a[i].tobytes() == b[i].tobytes() for i in ids)
    whole = stream.decode()
    assert np.abs(whole.astype(np.float64) - vol).max() <= 1e-3


def test_torch_bricks_copied_from_a_template_equal_fresh_builds():
    """Bricks of one config are copies of one built model with their own tensors loaded:
    the same parameters and values as a model built for the brick, and the template is
    never changed by a load."""
    torch = pytest.importorskip("torch")
    import os

    import neurvol
    from neurvol.models import get_architecture

    path = os.path.join(os.path.dirname(__file__), "golden", "bricked_v1.1.nvol")
    nv = neurvol.open(path, backend="torch")
    bricks = [b for b in range(nv.brick_count) if nv._reader.brick_length(b) > 9]
    assert len(bricks) >= 2
    pts = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (500, 3)).astype(np.float32))
    from neurvol.compress.payload import decode_payload

    loaded = []
    for b in bricks:
        model, _ = nv._load_brick(b)
        arch, config, specs = nv._config_specs(nv._brick_spec(b))
        arrays = decode_payload(nv._reader.read_brick(b), specs)
        fresh = get_architecture(arch.name).build(config)
        fresh.load_state_dict({n: torch.from_numpy(a) for n, a in arrays.items()})
        fresh.eval()
        state = model.state_dict()
        assert state.keys() == fresh.state_dict().keys()
        for name, tensor in fresh.state_dict().items():
            assert torch.equal(tensor, state[name])
        assert [p.requires_grad for p in model.parameters()] == \
            [p.requires_grad for p in fresh.parameters()]
        with torch.inference_mode():
            assert torch.equal(model(pts), fresh(pts))
        loaded.append((model, state))
    from neurvol import backend as B

    ptrs = {t.data_ptr() for _, state in loaded for t in state.values()}
    assert B._TEMPLATES
    for template, *_ in B._TEMPLATES.values():
        assert not any(t.data_ptr() in ptrs for t in template.state_dict().values())
    # The copies share no module, and no dict, set or list of one (parameters, buffers,
    # hooks), with a template or with each other; the templates stay in training mode.
    templates = [t for t, *_ in B._TEMPLATES.values()]
    assert all(m.training for t in templates for m in t.modules())
    seen = {id(x) for t in templates for m in t.modules()
            for x in [m, *(v for v in vars(m).values() if isinstance(v, (dict, set, list)))]}
    for model, _ in loaded:
        assert not any(m.training for m in model.modules())
        own = [x for m in model.modules()
               for x in [m, *(v for v in vars(m).values() if isinstance(v, (dict, set, list)))]]
        assert not seen & {id(x) for x in own}
        seen |= {id(x) for x in own}


def test_bricked_queries_evaluate_bricks_on_the_query_threads(monkeypatch):
    """A bricked query, cold (its bricks decoded on first use) or warm, evaluates its
    bricks on the query threads, never on the caller's; both give the same values."""
    import os
    import threading

    import neurvol
    from neurvol import neural_volume
    from neurvol.neural_volume import NeuralVolume

    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    where = []
    real = NeuralVolume._evaluate_brick

    def watched(self, b, norm):
        where.append(threading.current_thread().name)
        return real(self, b, norm)

    monkeypatch.setattr(NeuralVolume, "_evaluate_brick", watched)
    path = os.path.join(os.path.dirname(__file__), "golden", "bricked_v1.1.nvol")
    with neurvol.open(path, backend="numpy") as nv:
        top = np.asarray(nv.shape, dtype=np.float64) - 1
        pts = np.random.default_rng(0).uniform(0, 1, (500, 3)) * top
        cold = nv.query(pts)
        assert len(where) > 1 and all(n.startswith("neurvol-query") for n in where)
        where.clear()
        warm = nv.query(pts)
        assert len(where) > 1 and all(n.startswith("neurvol-query") for n in where)
    np.testing.assert_array_equal(cold, warm)


def test_torch_load_assigns_the_templates_slots_or_lets_load_state_dict_refuse():
    """A brick's tensors are assigned to its template copy's slots directly; tensors that
    do not fit the slots (names or shapes) are not assigned, and the load falls back to
    ``load_state_dict``, whose error names them."""
    torch = pytest.importorskip("torch")
    from neurvol import backend as B
    from neurvol.models.amgsrn import AMGSRNConfig

    config = AMGSRNConfig(grids=2, grid=(3, 4, 5), channels=1, width=8, hidden_layers=1)
    template, slots, _ = B._model_template("amgsrn", config)
    arrays = {n: np.full(s.shape, i, dtype=np.float32) for i, (n, s) in enumerate(slots.items())}
    model = B.TorchBackend().load("amgsrn", config, arrays)
    for name, tensor in model.state_dict().items():
        assert tensor.data_ptr() == arrays[name].ctypes.data       # the arrays, uncopied
    assert [p.requires_grad for p in model.parameters()] == \
        [p.requires_grad for p in template.parameters()]
    copy = B._module_copy(template, training=False)
    wrong = dict(arrays, grids=np.zeros((2, 1, 3, 4, 6), np.float32))
    assert not B._assign(copy, slots, wrong)
    assert copy.grids is template.grids                                # nothing assigned
    with pytest.raises(RuntimeError, match="grids"):
        B.TorchBackend().load("amgsrn", config, wrong)
    missing = {n: a for n, a in arrays.items() if n != "transforms.1"}
    with pytest.raises(RuntimeError, match="transforms.1"):
        B.TorchBackend().load("amgsrn", config, missing)
