"""Bricked queries (issue 26): points routed to bricks in one vectorised pass, each brick
evaluated once on its batch, the bricks a query touches decoded side by side; values as
the brick-by-brick evaluation of spec/bricks.md §4 gives them (to float rounding)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import neurvol
from neurvol import NeurvolFormatError, neural_volume
from neurvol.container import NvolReader, serialize_nvol
from neurvol.ensemble import BrickLayout
from neurvol.ensemble.routing import RoutedQuery, Router, spatial_order
from neurvol.neural_volume import NeuralVolume

OPTS = dict(ratio=8, arch="fvsrn", steps=10, seed=1, quiet=True, device="cpu")
BACKENDS = ("numpy", "torch")


@pytest.fixture(scope="module")
def files():
    """Bricked bytes of the sample: blended (3 x 2 x 2 bricks, ghost 2) and not (ghost 0)."""
    sample = neurvol.sample_volume()
    return {"blend": neurvol.encode(sample, bricks=(3, 2, 2), ghost=2, **OPTS).to_bytes(),
            "none": neurvol.encode(sample, bricks=(2, 2, 3), ghost=0, blend=False,
                                   **OPTS).to_bytes()}


def _points(shape, n=6000, seed=0):
    """Random index-space points plus voxel centres, faces, band edges and corners."""
    rng = np.random.default_rng(seed)
    top = np.asarray(shape, dtype=np.float64) - 1
    pts = rng.uniform(0, 1, (n, 3)) * top
    pts[:500] = np.round(pts[:500])
    special = np.array([0.0, 0.5, top[0] / 3, top[0] / 2, top[0] / 3 - 2, top[0] / 3 + 2,
                        2 * top[0] / 3, top[0] - 1e-9, top[0]])
    grid = np.stack(np.meshgrid(special, special, special), -1).reshape(-1, 3)
    return np.concatenate([pts, np.minimum(grid, top)])


def spatial_cells(coords, cells):
    """Cell id (C order) of each point in a cells^3 grid over [-1, 1]^3, written out (in
    the coordinates' dtype)."""
    c = np.clip(np.floor((coords + 1.0) * (cells / 2.0)), 0, cells - 1)
    return ((c[:, 0] * cells + c[:, 1]) * cells + c[:, 2]).astype(int)


def test_spatial_order_lists_points_cell_by_cell():
    coords = np.random.default_rng(3).uniform(-1, 1, (5000, 3))
    coords[:20] = 1.0
    order = spatial_order(coords, 8)
    assert sorted(order.tolist()) == list(range(5000))
    key = spatial_cells(coords[order], 8)
    assert (np.diff(key) >= 0).all() and key[-1] == 511
    same = key[1:] == key[:-1]
    assert (np.diff(order)[same] > 0).all()        # stable within a cell


def _atol(nv: NeuralVolume) -> float:
    """Float32 rounding of values over the file's range (batches of other sizes may round
    a model's last bits differently)."""
    lo, hi = nv.info()["value_range"]
    return 1e-6 * (hi - lo)


def _reference(nv: NeuralVolume, index_pts: np.ndarray) -> np.ndarray:
    """The former reader, literally: route every point (BrickLayout.route), evaluate each
    brick on its points in local coordinates, sum the weighted values in float64 in
    ascending brick order."""
    layout = nv._layout
    norm = np.clip(index_pts * (2.0 / (np.asarray(nv.shape, dtype=np.float64) - 1.0)) - 1.0,
                   -1.0, 1.0)
    pts, bids, weights = layout.route(norm)
    acc = np.zeros(norm.shape[0])
    for b in np.unique(bids):
        sel = bids == b
        vals = nv._evaluate_brick(int(b), layout.local(int(b), norm[pts[sel]]))
        acc[pts[sel]] += weights[sel] * vals
    return acc.astype(np.float32)


@pytest.mark.parametrize("kind", ["blend", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_query_equals_the_brick_by_brick_evaluation(files, kind, backend):
    with NeuralVolume(NvolReader(files[kind]), backend=backend) as nv:
        pts = _points(nv.shape)
        got = nv.query(pts)
        ref = _reference(nv, pts)
        np.testing.assert_allclose(got, ref, rtol=0, atol=_atol(nv))
        # voxel centres: query equals decode (to the same rounding)
        full = nv.decode(dtype=np.float32)
        centres = pts[:500].astype(int)
        np.testing.assert_allclose(got[:500], full[tuple(centres.T)], rtol=0, atol=_atol(nv))


@pytest.mark.parametrize("shape, grid, ghost, blend", [
    ((66, 66, 66), (3, 2, 2), 2, True), ((66, 40, 33), (2, 3, 2), 2, True),
    ((50, 50, 50), (1, 4, 1), 3, True), ((66, 66, 66), (2, 3, 4), 0, False),
    ((66, 66, 66), (2, 2, 2), 2, False)])
@pytest.mark.parametrize("cells", [1, 8])
def test_router_gives_the_entries_of_route_and_local_exactly(shape, grid, ghost, blend, cells):
    """Every (point, brick) pair of BrickLayout.route, with its weight and BrickLayout.local
    coordinates bit for bit, grouped by ascending brick (within a brick cell by cell, or,
    without blending, in the points' order)."""
    layout = BrickLayout.checked(shape, grid, ghost, blend)
    norm = np.clip(_points(shape, 3000, seed=1) * (2.0 / (np.asarray(shape) - 1.0)) - 1.0, -1, 1)
    batches = Router(layout).batches(norm, cells)
    pts, bids, weights = layout.route(norm)
    assert batches.point.shape[0] == pts.shape[0]
    assert batches.bricks.tolist() == sorted(set(bids.tolist()))
    assert (np.diff(batches.bricks) > 0).all()
    got_w = np.ones(pts.shape[0]) if batches.weight is None else batches.weight
    for g, b in enumerate(batches.bricks.tolist()):
        a, e = batches.bounds[g], batches.bounds[g + 1]
        ref_pts = pts[bids == b]
        order = np.argsort(ref_pts)
        assert np.array_equal(np.sort(batches.point[a:e]), ref_pts[order])
        mine = np.argsort(batches.point[a:e])
        assert np.array_equal(got_w[a:e][mine], weights[bids == b][order])
        # the float32 the models take of BrickLayout.local's float64
        ref_local = layout.local(b, norm[ref_pts[order]]).astype(np.float32)
        assert np.array_equal(batches.local[a:e][mine], ref_local)
        if cells == 1:
            if batches.weight is None:        # one entry per point: the points' order
                assert (np.diff(batches.point[a:e]) > 0).all()
        else:
            key = spatial_cells(batches.local[a:e], cells)
            assert (np.diff(key) >= 0).all()
    if not blend or ghost == 0:
        assert batches.weight is None
    # combine: the weighted sum, as the reference's float64 accumulation
    values = np.random.default_rng(2).uniform(0, 1, batches.point.shape[0]).astype(np.float32)
    acc = np.zeros(norm.shape[0])
    for g in range(batches.bricks.size):
        sl = slice(batches.bounds[g], batches.bounds[g + 1])
        acc[batches.point[sl]] += got_w[sl] * values[sl]
    assert np.array_equal(batches.combine(values), acc.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunking_and_threads_do_not_change_values(files, backend, monkeypatch):
    with NeuralVolume(NvolReader(files["blend"]), backend=backend) as nv:
        pts = _points(nv.shape, 20000)
        one, atol = nv.query(pts), _atol(nv)
    monkeypatch.setattr(neural_volume, "ROUTE_CHUNK", 1000)
    monkeypatch.setattr(neural_volume, "MODEL_CHUNK", 700)
    for threads in (1, 3):
        monkeypatch.setattr(neural_volume, "QUERY_THREADS", threads)
        with NeuralVolume(NvolReader(files["blend"]), backend=backend) as nv:
            np.testing.assert_allclose(nv.query(pts), one, rtol=0, atol=atol)


def test_touched_bricks_are_decoded_side_by_side_each_once(files, monkeypatch):
    """A cold query over every brick decodes two of them at the same time (both loads
    wait at a barrier that a serial reader would never pass) and each brick once."""
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    barrier = threading.Barrier(2, timeout=60)
    load = NeuralVolume._load_brick
    calls = []

    def meeting_load(self, b):
        calls.append(b)
        if len(calls) <= 2:
            barrier.wait()           # BrokenBarrierError if the first two loads do not overlap
        return load(self, b)

    monkeypatch.setattr(NeuralVolume, "_load_brick", meeting_load)
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        pts = _points(nv.shape, 1000)
        got = nv.query(pts)
        assert sorted(calls) == list(range(nv.brick_count))
        assert nv.stats["bricks_read"] == nv.brick_count
    monkeypatch.setattr(NeuralVolume, "_load_brick", load)
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        np.testing.assert_allclose(got, nv.query(pts), rtol=0, atol=_atol(nv))


def test_cold_bricks_are_taken_longest_payload_first(files, monkeypatch):
    """The query threads take the bricks a cold query touches longest payload first (a
    large brick taken last would leave the other threads idle), cached bricks after them;
    the values do not depend on the order."""
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 1)
    calls = []
    load = NeuralVolume._load_brick

    def logged_load(self, b):
        calls.append(b)
        return load(self, b)

    monkeypatch.setattr(NeuralVolume, "_load_brick", logged_load)
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        lengths = [nv._reader.brick_length(b) for b in range(nv.brick_count)]
        assert len(set(lengths)) > 1
        pts = _points(nv.shape, 1000)
        nv.query(pts[:10])                     # a few bricks cached
        cached = list(calls)
        got = nv.query(pts)
        cold = calls[len(cached):]
        assert sorted(cold) == sorted(set(range(nv.brick_count)) - set(cached))
        assert [lengths[b] for b in cold] == sorted((lengths[b] for b in cold), reverse=True)
        tasks = [(b, None) for b in range(nv.brick_count)]
        assert nv._cold_first(tasks) == tasks  # all cached: the routing order
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        assert nv.query(pts).tobytes() == got.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_few_points_decode_cold_bricks_first_then_evaluate_on_one_thread(files, backend,
                                                                            monkeypatch):
    """A cold query of at most FEW_POINTS points decodes the bricks it touches (side by
    side) before evaluating any, then evaluates them all on one query thread; a larger
    query, or one whose bricks would not all fit in the cache, evaluates each brick as
    it is decoded. The values are the same either way, bit for bit."""
    pytest.importorskip(backend)
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    events = []
    load, evaluate = NeuralVolume._load_brick, NeuralVolume._evaluate_brick

    def logged_load(self, b):
        events.append(("load", threading.current_thread().name))
        return load(self, b)

    def logged_evaluate(self, b, norm):
        events.append(("eval", threading.current_thread().name))
        return evaluate(self, b, norm)

    monkeypatch.setattr(NeuralVolume, "_load_brick", logged_load)
    monkeypatch.setattr(NeuralVolume, "_evaluate_brick", logged_evaluate)

    def cold_query(pts):
        events.clear()
        with NeuralVolume(NvolReader(files["blend"]), backend=backend) as nv:
            return nv.query(pts), nv.brick_count

    with NeuralVolume(NvolReader(files["blend"]), backend=backend) as nv:
        pts = _points(nv.shape, 1000)
    few, count = cold_query(pts)
    kinds = [k for k, _ in events]
    assert kinds.count("load") == count and kinds.index("eval") == count   # loads first
    eval_threads = {t for k, t in events if k == "eval"}
    assert len(eval_threads) == 1 and threading.current_thread().name not in eval_threads
    # Streaming: a larger query (here: the threshold lowered), or a cache too small.
    monkeypatch.setattr(neural_volume, "FEW_POINTS", 10)
    streamed, _ = cold_query(pts)
    assert [k for k, _ in events].index("eval") < count
    assert streamed.tobytes() == few.tobytes()
    monkeypatch.setattr(neural_volume, "FEW_POINTS", 1 << 20)
    monkeypatch.setattr(neural_volume, "MAX_CACHE_BYTES", 1)
    small_cache, _ = cold_query(pts)
    assert [k for k, _ in events].index("eval") < count
    assert small_cache.tobytes() == few.tobytes()


def test_side_by_side_decodes_keep_the_cache_cap(files, monkeypatch):
    """With a cap below the touched bricks' bytes, a cold query still decodes each brick
    once and the cache never holds more than the cap."""
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        sizes = [nv._brick_bytes(b) for b in range(nv.brick_count)]
        pts = _points(nv.shape, 3000)
        ref = nv.query(pts)
    # Room for the largest brick, but not for all of them (how bytes split across bricks
    # is the encoder's choice, so the cap follows the sizes).
    cap = max(max(sizes), sum(sizes) // 2)
    assert sum(sizes) > cap
    monkeypatch.setattr(neural_volume, "MAX_CACHE_BYTES", cap)
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    held = []
    load = NeuralVolume._load_brick

    def watched_load(self, b):
        held.append(self._cache_bytes)
        return load(self, b)

    monkeypatch.setattr(NeuralVolume, "_load_brick", watched_load)
    with NeuralVolume(NvolReader(files["blend"]), backend="numpy") as nv:
        np.testing.assert_allclose(nv.query(pts), ref, rtol=0, atol=_atol(nv))
        assert nv.stats["bricks_read"] == nv.brick_count
        assert max(held) <= cap and nv._cache_bytes <= cap


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_brick_fails_every_query_that_needs_it(files, backend, monkeypatch):
    """A brick whose payload is damaged raises a format error from the thread that
    decodes it, on every query that touches it (no brick is left half-loaded)."""
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    reader = NvolReader(files["blend"])
    bricks = [reader.read_brick(b) for b in range(reader.brick_count)]
    bad = bytearray(bricks[5])
    bad[1:] = bytes(len(bad) - 1)
    bricks[5] = bytes(bad)
    header = {k: v for k, v in reader.header.items() if k != "sections"}
    data = serialize_nvol(header, bricks, minor=reader.version[1])
    with NeuralVolume(NvolReader(data), backend=backend) as nv:
        pts = _points(nv.shape, 2000)
        for _ in range(2):
            with pytest.raises(NeurvolFormatError):
                nv.query(pts)
            assert not nv._loading
        # the other bricks still answer
        norm = np.clip(pts * (2.0 / (np.asarray(nv.shape) - 1.0)) - 1.0, -1, 1)
        entry_pts, bids, _ = nv._layout.route(norm)
        clear = np.setdiff1d(np.arange(pts.shape[0]), entry_pts[bids == 5])
        assert 0 < clear.size < pts.shape[0]
        assert np.isfinite(nv.query(pts[clear])).all()


def _fake_model(brick, local):
    """A stand-in for brick ``brick``'s model: float32 values that depend on the brick and
    on every bit of the local coordinates' float32 sum."""
    return (np.float32(brick) + local.astype(np.float64) @ np.array([0.5, 0.25, 0.125])
            ).astype(np.float32)


@pytest.mark.parametrize("shape, grid, ghost, blend", [
    ((66, 66, 66), (3, 2, 2), 2, True), ((66, 40, 33), (2, 3, 2), 2, True),
    ((50, 50, 50), (1, 4, 1), 3, True), ((66, 66, 66), (2, 3, 4), 0, False),
    ((40, 40, 40), (5, 5, 5), 1, True)])
@pytest.mark.parametrize("cells", [1, 2, 8])
@pytest.mark.parametrize("piece, task", [(50_000, 50_000), (700, 900)])
def test_routed_query_sums_the_brick_by_brick_values_exactly(shape, grid, ghost, blend,
                                                             cells, piece, task):
    """RoutedQuery in pieces and tasks of any size: every task holds entries of its brick
    only, with BrickLayout.local's coordinates, cell by cell; the combined values are
    the reference's weighted float64 sums in ascending brick id, bit for bit."""
    layout = BrickLayout.checked(shape, grid, ghost, blend)
    norm = np.clip(_points(shape, 5000, seed=4) * (2.0 / (np.asarray(shape) - 1.0)) - 1.0, -1, 1)
    pts, bids, weights = layout.route(norm)
    acc = np.zeros(norm.shape[0])
    for b in np.unique(bids).tolist():          # ascending brick id
        sel = bids == b
        local = layout.local(b, norm[pts[sel]]).astype(np.float32)
        np.add.at(acc, pts[sel], weights[sel] * _fake_model(b, local))
    routed = RoutedQuery(Router(layout), cells)
    n = norm.shape[0]
    for a in range(0, n, piece):
        routed.add(a, norm[a:a + piece])
    seen = []

    def evaluate(b, local):
        seen.append(local.shape[0])
        return _fake_model(b, local)

    tasks = routed.tasks(task)
    # A task is one segment, or segments of one brick adding up to at most ``task``.
    assert all(len(segs) == 1 or sum(e - s for _, s, e in segs) <= task for _, segs in tasks)
    for t in tasks:
        routed.run(t, evaluate)
    assert sum(seen) == pts.shape[0]            # every (point, brick) pair once
    out = np.empty(norm.shape[0], dtype=np.float32)
    for a in range(0, norm.shape[0], piece):
        routed.combine(a, out[a:a + piece])
    assert np.array_equal(out, acc.astype(np.float32))


@pytest.mark.parametrize("shape, grid", [((66, 66, 66), (3, 2, 2)), ((40, 41, 42), (5, 4, 3))])
@pytest.mark.parametrize("cells", [1, 2, 4, 8, 6])
def test_route_piece_keys_are_the_hash_brick_and_its_cell(shape, grid, cells):
    """The key of each point's home entry is its hash brick (spec/nvol.md §5, on faces
    too) times cells^3 plus its cell of a cells^3 grid over the brick's core, with cells
    the power of two query_cells picks."""
    from neurvol.container import brick_ids

    layout = BrickLayout.checked(shape, grid, 2, True)
    router = Router(layout)
    c = router.query_cells(cells)
    assert c & (c - 1) == 0 and c <= cells and layout.count * c ** 3 < 1 << 16
    norm = np.clip(_points(shape, 4000, seed=5) * (2.0 / (np.asarray(shape) - 1.0)) - 1.0, -1, 1)
    key = np.empty(norm.shape[0], dtype=router.key_dtype(c))
    local = np.empty((norm.shape[0], 3), dtype=np.float32)
    router.route_piece(norm, key, local, c)
    fine = [np.minimum(np.floor(nb * c * (norm[:, a] + 1.0) / 2.0), nb * c - 1).astype(int)
            for a, nb in enumerate(grid)]
    cell = (fine[0] % c * c + fine[1] % c) * c + fine[2] % c
    assert np.array_equal(key.astype(int), brick_ids(norm, grid) * c ** 3 + cell)


@pytest.fixture(scope="module")
def amgsrn_file():
    """An amgsrn sample in 2 x 2 x 3 bricks, ghost 2, blended (the architecture the
    automatic bricking fits)."""
    opts = dict(OPTS, arch="amgsrn")
    return neurvol.encode(neurvol.sample_volume(), bricks=(2, 2, 3), ghost=2, **opts).to_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_amgsrn_query_equals_the_brick_by_brick_evaluation(amgsrn_file, backend, monkeypatch):
    """Random points (enough to be sorted cell by cell), voxel centres, faces, edges,
    corners and points outside (clamp=True) give the brick-by-brick values, in one piece
    or many, with one thread or several."""
    with NeuralVolume(NvolReader(amgsrn_file), backend=backend) as nv:
        pts = _points(nv.shape, 9000, seed=6)
        top = np.asarray(nv.shape, dtype=np.float64) - 1
        outside = np.array([[-3.0, 5.0, 5.0], [top[0] + 0.5, top[1] + 2, -1e-3],
                            [2.0, -7.0, top[2] + 9]])
        pts = np.concatenate([pts, outside])
        ref = _reference(nv, pts)
        with pytest.raises(neurvol.NeurvolInputError, match="3 points lie outside"):
            nv.query(pts)
        atol = _atol(nv)
        np.testing.assert_allclose(nv.query(pts, clamp=True), ref, rtol=0, atol=atol)
        assert not any(isinstance(nv._brick_model(b), float) for b in range(nv.brick_count))
    monkeypatch.setattr(neural_volume, "ROUTE_CHUNK", 4100)
    monkeypatch.setattr(neural_volume, "ROUTE_PIECE", 999)
    monkeypatch.setattr(neural_volume, "BRICK_TASK", 1500)
    for threads in (1, 2):
        monkeypatch.setattr(neural_volume, "QUERY_THREADS", threads)
        with NeuralVolume(NvolReader(amgsrn_file), backend=backend) as nv:
            np.testing.assert_allclose(nv.query(pts, clamp=True), ref, rtol=0, atol=atol)
