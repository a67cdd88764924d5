"""SZ3 (pysz) as a grid-coding stage vs neurvol's interp coder, at equal grid bytes.

    python benchmarks/sz3_stage.py ct_walnut 1        # SZ3 on each 3-D grid separately
    python benchmarks/sz3_stage.py ct_walnut 1 4d     # SZ3 on all grids as one 4-D array

Fits the default model (amgsrn at ratio 100, 2000 x 16384) and codes only its feature
grids, at 2, 3 and 4 bits per grid value: with neurvol's interp record (the step bisected
to the byte target) and with SZ3's absolute error bound bisected to the same bytes. The
MLP and transforms stay float32; PSNR is the model's over the whole volume.
"""
import os, sys, numpy as np, torch, neurvol
from neurvol.models import get_architecture
from neurvol.fit import FitSettings, fit
from neurvol.compress.records import encode_record, grid_codes
from pysz import sz, szConfig, szErrorBoundMode
name, sub = sys.argv[1], int(sys.argv[2]); MODE4 = len(sys.argv) > 3
v = np.load(os.path.join(os.environ.get("NEURVOL_DATA", "/work/shared/data"), f"{name}.npy"), mmap_mode="r")[::sub, ::sub, ::sub].astype(np.float32)
lo, hi = float(v.min()), float(v.max())
data = torch.from_numpy((v - lo) / (hi - lo))
spec = neurvol.encode(v, ratio=100, quiet=True, steps=1).info()["model"]
arch = get_architecture(spec["arch"])
model = arch.build(arch.config_cls.from_dict(spec["config"]))
torch.manual_seed(0)
fit(model, data, FitSettings(steps=2000, batch=16384))
axes = [torch.linspace(-1, 1, n) for n in data.shape]
coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
def psnr_with(grids):
    with torch.no_grad():
        old = model.grids.detach().clone(); model.grids.copy_(torch.from_numpy(grids))
        with torch.inference_mode(): rec = torch.cat([model(c) for c in coords.split(1 << 15)]).numpy()
        model.grids.copy_(old)
    mse = float(np.mean((rec.clip(0, 1) - data.numpy().reshape(-1)) ** 2))
    return 10 * np.log10(1 / mse)
g = model.grids.detach().numpy().astype(np.float32)          # (M, C, D, H, W)
print(spec["arch"], spec["config"], "grid values", g.size, "float model %.2f dB" % psnr_with(g))
def sz_bytes4(eb):
    a = np.ascontiguousarray(g.reshape(-1, *g.shape[2:])); conf = szConfig(a.shape)
    conf.errorBoundMode = szErrorBoundMode.ABS; conf.absErrorBound = float(eb)
    comp, _ = sz.compress(a, conf)
    r, _ = sz.decompress(comp, np.float32, a.shape)
    return len(comp), np.asarray(r).reshape(g.shape)
def sz_bytes(eb):
    if MODE4: return sz_bytes4(eb)
    tot, rec = 0, np.empty_like(g)
    for m in range(g.shape[0]):
        for c in range(g.shape[1]):
            a = np.ascontiguousarray(g[m, c]); conf = szConfig(a.shape)
            conf.errorBoundMode = szErrorBoundMode.ABS; conf.absErrorBound = float(eb)
            comp, _ = sz.compress(a, conf); tot += len(comp)
            r, _ = sz.decompress(comp, np.float32, a.shape); rec[m, c] = np.asarray(r).reshape(a.shape)
    return tot, rec
span = float(g.max() - g.min())
for bits in (2.0, 3.0, 4.0):
    target = g.size * bits / 8
    # interp: step bisected to the target bytes (the whole record, all grids in one tensor)
    lo_s, hi_s = span * 1e-6, span
    for _ in range(40):
        s = float(np.sqrt(lo_s * hi_s))
        n = len(encode_record(g, "interp", step=s))
        lo_s, hi_s = (s, hi_s) if n > target else (lo_s, s)
    s = hi_s; n_i = len(encode_record(g, "interp", step=s)); rec_i = grid_codes(g, "interp", np.float32(s))[1].reshape(g.shape)
    lo_e, hi_e = span * 1e-6, span
    for _ in range(40):
        e = float(np.sqrt(lo_e * hi_e)); n, _ = sz_bytes(e)
        lo_e, hi_e = (e, hi_e) if n > target else (lo_e, e)
    n_s, rec_s = sz_bytes(hi_e)
    print(f"{bits} bits/value: interp {n_i} B {psnr_with(rec_i):.2f} dB | SZ3 {n_s} B {psnr_with(rec_s):.2f} dB")
