"""Writes the golden files of the current format version. Run once per released format
version / codec configuration, commit the output, and never regenerate existing files:
they pin what old files decode to.

    python tests/golden/make_golden.py 1.0
    python tests/golden/make_golden.py 1.1     # bricked ensemble (format 1.1)
    python tests/golden/make_golden.py codec2  # codec "neurvol" version 2 (payload kind 2)
    python tests/golden/make_golden.py codec2-interp   # + interp-coded grids (method 4)

Never re-run a mode whose files exist: golden files pin what old writers wrote.
"""
import os
import sys

import numpy as np

import neurvol

here = os.path.dirname(os.path.abspath(__file__))
version = sys.argv[1]
if version == "1.1":
    # Format 1.1 adds bricked ensembles (spec/bricks.md): 2x2x2 bricks, ghost 2, blended.
    crop = np.ascontiguousarray(neurvol.sample_volume()[20:44, 20:44, 20:44])
    nv = neurvol.encode(crop, ratio=2, bricks=(2, 2, 2), ghost=2, arch="fvsrn", steps=20,
                        seed=0, quiet=True)
    nv.save(os.path.join(here, "bricked_v1.1.nvol"))
    np.save(os.path.join(here, "bricked_v1.1.expected.npy"), nv.decode(dtype=np.float32))
    sys.exit(0)
if version == "codec2-interp":
    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48])
    nv = neurvol.encode(crop, steps=30, seed=0, quiet=True, arch="amgsrn", ratio=8,
                        codec={"grids": "interp"})
    path = os.path.join(here, "codec2_interp.nvol")
    nv.save(path)
    np.save(path.replace(".nvol", ".expected.npy"), nv.decode(dtype=np.float32))
    sys.exit(0)
if version == "codec2":
    # Payload kind 2: Lorenzo grids + fine-tuning (amgsrn), masked k-means (pruned fvsrn),
    # and every stream forced through rANS (or raw where rANS cannot code it).
    crop = np.ascontiguousarray(neurvol.sample_volume()[16:48, 16:48, 16:48])
    cases = {"amgsrn": dict(arch="amgsrn", codec={"grids": "lorenzo"}, ratio=8),
             "pruned": dict(arch="fvsrn", codec={"prune": 0.3}, ratio=8),
             "rans": dict(arch="fvsrn", codec={"coders": ["raw", "rans"]}, ratio=3)}
    for name, kw in cases.items():
        nv = neurvol.encode(crop, steps=30, seed=0, quiet=True, **kw)
        path = os.path.join(here, f"codec2_{name}.nvol")
        nv.save(path)
        np.save(path.replace(".nvol", ".expected.npy"), nv.decode(dtype=np.float32))
    sys.exit(0)
vol = np.ascontiguousarray(neurvol.sample_volume()[26:38, 24:38, 22:38]).astype(np.float32)
nv = neurvol.encode(vol, ratio=2, steps=40, seed=0, quiet=True)
nv.save(os.path.join(here, f"fvsrn_v{version}.nvol"))
np.save(os.path.join(here, f"fvsrn_v{version}.expected.npy"), nv.decode(dtype=np.float32))
const = neurvol.encode(np.full((10, 12, 14), 77, dtype=np.uint16), ratio=2, quiet=True)
const.save(os.path.join(here, f"constant_v{version}.nvol"))

