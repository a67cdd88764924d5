"""The data every benchmark of the current results shares: where the volumes are and which
seven are the dev volumes (the 256^3 ones at half resolution, so every cell is a
128^3-class fit)."""
from __future__ import annotations

import os
from typing import List, Tuple

DEFAULT_DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")

#: (file stem in DEFAULT_DATA, subsampling step per axis)
DEV_VOLUMES: List[Tuple[str, int]] = [
    ("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_neghip", 1),
    ("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_chest_lidc2", 2),
    ("sim_isabel_windspeed_t30", 2)]
