"""Bounded encoder memory (issue 26): the correction encoder codes a batch of blocks at a
time and gives the bytes of the whole-volume encoder it replaced; a memmapped volume is
not copied whole; the predictor candidate's PSNR is the reader's; partial bricked encodes
(benchmarks of volumes too large to encode in full) fit exactly the bricks of a full one."""
from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

import neurvol
from neurvol.compress.correction import encode as correction_encode
from neurvol.compress.correction import decode_correction, encode_correction
from neurvol.container import NvolReader
from neurvol.encoding import entry
from neurvol.encoding.bricked import partial_bricks
from neurvol.errors import NeurvolInputError
from neurvol.metrics import psnr
from neurvol.neural_volume import NeuralVolume


def _field(shape, seed):
    """A smooth polynomial plus integer noise (exact IEEE operations only, so the bytes
    below do not depend on a platform's math library)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return (x - 13.0) ** 2 / 64.0 + y * z / 32.0 - z / 4.0 + rng.integers(-8, 9, shape) / 64.0


def _cases():
    f = _field((37, 29, 41), 1).astype(np.float32)
    u8 = np.clip(_field((33, 40, 24), 2) * 4.0 + 20.0, 0, 255).astype(np.uint8)
    base = (f + np.random.default_rng(3).integers(-4, 5, f.shape) / 32.0).astype(np.float32)
    return {"f32": (f, 0.02, None, dict(block=16)),
            "u8": (u8, 1.0, None, dict(block=8)),
            "f32-base": (f, 0.01, base, dict(block=12, base_tolerance=1e-4))}


#: sha256 of these streams (correction stream version 2) from the encoder before batching
#: (whole-volume float64 temporaries): the batched encoder must give the same bytes.
_BEFORE_BATCHING = {
    "f32": "2283fcf823627f11d37e670d1105924855dce096801d6d859bf1776b679f8ebc",
    "u8": "ef7cdb3ed05f3c448ece27f81dd84db09c5e56c0a0710ce529ec5d38ff64a41b",
    "f32-base": "e27ec63f212cbbd6085aeaefb4a2ec545f00c2f13c4d301a29bc3e2c5f09d50a",
}


@pytest.mark.parametrize("name", sorted(_BEFORE_BATCHING))
@pytest.mark.parametrize("batch", [None, 1])
def test_batched_correction_encode_gives_the_previous_bytes(name, batch, monkeypatch):
    if batch is not None:       # one block per batch (several batches per block shape)
        monkeypatch.setattr(correction_encode, "ENCODE_BATCH_VOXELS", batch)
    vol, bound, base, kw = _cases()[name]
    data, stats = encode_correction(vol, bound, base, **kw)
    assert hashlib.sha256(data).hexdigest() == _BEFORE_BATCHING[name]
    assert stats.blocks > 4


def test_memmapped_volume_is_not_copied_whole(tmp_path, monkeypatch):
    # Batches of one 32^3 block: numpy's allocations (tracemalloc sees them) stay below a
    # float64 copy of the volume (2x its float32 bytes); the encoder before batching
    # allocated over 20x.
    monkeypatch.setattr(correction_encode, "ENCODE_BATCH_VOXELS", 32 ** 3)
    path = tmp_path / "v.npy"
    np.save(path, _field((128, 128, 128), 4).astype(np.float32))
    vol = np.load(path, mmap_mode="r")
    tracemalloc.start()
    try:
        data, _ = encode_correction(vol, 0.05, None, block=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.75 * vol.nbytes
    # ... and the stream is the one of the volume in memory.
    assert data == encode_correction(np.array(vol), 0.05, None, block=32)[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_predictor_psnr_is_the_psnr_of_the_file_a_reader_decodes(dtype, monkeypatch):
    monkeypatch.setattr(correction_encode, "ENCODE_BATCH_VOXELS", 16 ** 3)
    vol = _field((40, 36, 44), 5)
    vol = (np.clip(vol * 3.0 + 10.0, 0, 255) if dtype == np.uint8 else vol).astype(dtype)
    lo, hi = float(vol.min()), float(vol.max())
    cand = entry._predictor(vol, lo, hi, 12.0, (1.0,) * 3, (0.0,) * 3)
    assert cand is not None and cand.kind == "predictor"
    decoded = NeuralVolume(NvolReader(cand.volume.to_bytes())).decode()
    assert cand.psnr == psnr(vol, decoded)
    # The reader's whole decode goes a few blocks at a time: the same voxels as in one go.
    from neurvol.compress.correction import stream as correction_stream
    for bound in (0.0 if vol.dtype.kind == "u" else 1e-5, 3.0):
        stream, _ = encode_correction(vol, bound, None, block=16)
        monkeypatch.setattr(correction_stream, "BATCH_VOXELS", 1 << 30)
        whole = decode_correction(stream, vol.shape, vol.dtype)
        monkeypatch.setattr(correction_stream, "BATCH_VOXELS", 16 ** 3)
        assert np.array_equal(decode_correction(stream, vol.shape, vol.dtype), whole)

OPTS = dict(ratio=8, arch="fvsrn", steps=20, seed=3, quiet=True, device="cpu")


def test_partial_bricked_encode_fits_the_first_bricks_as_a_full_encode_does():
    sample = neurvol.sample_volume()
    full = neurvol.encode(sample, bricks=(2, 2, 2), ghost=2, **OPTS)
    with partial_bricks(3):
        part = neurvol.encode(sample, bricks=(2, 2, 2), ghost=2, **OPTS)
    assert part.partial_bricks == [0, 1, 2]
    assert sorted(part.brick_psnr) == [0, 1, 2]
    assert sorted(full.brick_psnr) == list(range(8)) and not hasattr(full, "partial_bricks")
    for b in range(8):
        payload = part._reader.read_brick(b)
        if b < 3:      # the same share, model and fit as in the full encode
            assert payload == full._reader.read_brick(b)
            assert part.brick_psnr[b] == full.brick_psnr[b]
        else:          # stored as a constant
            assert payload[:1] == b"\x00"
    assert part.nbytes_file <= sample.nbytes / 8
    assert part.decode().shape == sample.shape
    assert part.jobs_seconds > 0


def test_partial_bricked_encode_can_fit_the_bricks_with_the_largest_shares(monkeypatch):
    # Memory peaks on the largest models: a partial encode can fit those bricks, each as
    # a full encode fits it.
    from neurvol.encoding import bricked

    budgets = {}
    real = bricked.run_jobs

    def recording(jobs, *args, **kwargs):
        budgets.update({j.brick: j.budget for j in jobs})
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(bricked, "run_jobs", recording)
    sample = neurvol.sample_volume()
    full = neurvol.encode(sample, bricks=(2, 2, 2), ghost=2, **OPTS)
    assert len(set(budgets.values())) > 2            # shares differ: the choice matters
    largest = sorted(sorted(budgets, key=lambda b: (-budgets[b], b))[:3])
    assert largest != [0, 1, 2]
    with partial_bricks(3, largest=True):
        part = neurvol.encode(sample, bricks=(2, 2, 2), ghost=2, **OPTS)
    assert part.partial_bricks == largest
    for b in range(8):
        payload = part._reader.read_brick(b)
        if b in largest:
            assert payload == full._reader.read_brick(b)
        else:
            assert payload[:1] == b"\x00"


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_partial_bricks_refuses_a_bad_count(bad):
    with pytest.raises(NeurvolInputError, match="max_bricks"):
        with partial_bricks(bad):
            pass


@pytest.mark.parametrize("shape", [(3, 1, 5, 6, 7), (2, 1, 1, 1, 9), (1, 2, 3, 2),
                                   (4, 1, 17, 9, 33), (1, 1, 1), (1, 1, 40, 3, 70)])
def test_rate_residuals_are_the_coders_and_their_gradient_is_the_transpose(shape):
    # The rate penalty's residuals come from strided slices of the grid (no operator
    # matrix, which cost over a hundred bytes per grid value): they are the interp
    # coder's residuals in its stream order, and the gradient is the exact transpose.
    import torch

    from neurvol.compress.interp import interp_encode
    from neurvol.fit.rate import ResidualOperator

    x = np.random.default_rng(1).normal(size=shape)
    step = 1e-7
    codes, _ = interp_encode(x, step)
    op = ResidualOperator(shape)
    grid = torch.from_numpy(x).requires_grad_()
    r = op(grid)
    np.testing.assert_allclose(r.detach().numpy(), codes.reshape(-1) * step, atol=1e-5)
    # The operator as a dense matrix, one column per unit grid; the gradient of
    # <w, op(grid)> is op.T @ w for any w.
    n = x.size
    dense = np.stack([op(torch.from_numpy(np.eye(n)[i].reshape(shape))).detach().numpy()
                      for i in range(n)], axis=1) if n <= 1000 else None
    w = np.random.default_rng(2).normal(size=n)
    (r * torch.from_numpy(w)).sum().backward()
    if dense is not None:
        np.testing.assert_allclose(dense @ x.reshape(-1), r.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(grid.grad.numpy().reshape(-1), dense.T @ w, atol=1e-12)
    small = torch.from_numpy(x.reshape((-1,) + x.shape[-3:])[:1, :9, :7, :10].copy())
    small.requires_grad_()
    assert torch.autograd.gradcheck(ResidualOperator(small.shape), (small,))


def test_rate_operator_follows_its_grid_and_refuses_another_shape():
    # The operator keeps views of the grid it was last given (the fit's parameter):
    # a new tensor, or the same one changed in place, gives its own residuals.
    import torch

    from neurvol.fit.rate import ResidualOperator, interp_residuals

    rng = np.random.default_rng(3)
    a, b = (torch.from_numpy(rng.normal(size=(2, 1, 6, 5, 7))) for _ in range(2))
    op = ResidualOperator(a.shape)
    ra = op(a)
    assert torch.equal(op(b), interp_residuals(b))
    assert torch.equal(op(a), ra)
    a.mul_(2.0)
    torch.testing.assert_close(op(a), 2.0 * ra)
    with pytest.raises(ValueError, match="residual operator"):
        op(torch.zeros(2, 1, 6, 5, 6, dtype=torch.float64))


def test_rate_l1_is_the_residuals_l1_forwards_and_backwards():
    # The penalty's sum |residual| keeps residuals and signs in the operator's buffer:
    # the same value and gradient as through the residuals, also after the operator
    # was given another grid; a second forward before the backward is refused.
    import torch

    from neurvol.fit.rate import ResidualOperator

    rng = np.random.default_rng(4)
    x, other = rng.normal(size=(2, 1, 9, 8, 11)), rng.normal(size=(2, 1, 9, 8, 11))
    op = ResidualOperator(x.shape)
    ref = torch.from_numpy(x).requires_grad_()
    op(ref).abs().sum().backward()
    for rebind in (False, True):
        grid = torch.from_numpy(x).requires_grad_()
        total = op.l1(grid)
        if rebind:
            op(torch.from_numpy(other))
        (3.0 * total).backward()
        torch.testing.assert_close(total, op(ref).abs().sum())
        torch.testing.assert_close(grid.grad, 3.0 * ref.grad)
    grid = torch.from_numpy(x).requires_grad_()
    first = op.l1(grid)
    op.l1(grid)
    with pytest.raises(RuntimeError, match="inplace"):
        first.backward()
