"""Error-bounded correction stream: ``decoded = base + correction`` within ``E`` of the
original on every voxel, coded in independently decodable blocks (``spec/correction.md``).

``base`` is what the decoder already has on the voxel grid (a model's reconstruction, or
nothing when there is no model). Each block of ``B^3`` voxels is coded in the mode whose
codes cost the fewest bits:

* data modes — the multilevel interpolation predictor of :mod:`..interp` on the values
  themselves (SZ3's predictor), with its cubic kernel or a linear one (better on noisy
  data such as CT);
* residual modes — the same on ``value - base`` (the model predicts the large scales);
* base mode — the base is the prediction: ``code = round((value - base) / step)``.

All quantize in the loop with bins of width ``step = 2 E_q``, ``E_q`` a little under
``E`` (:func:`quantization_bound`), so every value is within ``E_q`` of its reconstruction
before the final cast to the volume's dtype. The encoder then decodes every block exactly
as the decoder will (float64, then the cast) and stores the few voxels that still break the
bound losslessly as *exceptions*, so the guarantee is exact, not probabilistic.

Codes are entropy coded with static rANS models (as in :mod:`..streams`), one per class:
a point's level and how rough its decoded neighbourhood is (:func:`.predict.context`). The tables
are stored once for the whole stream, so a block costs only its own words. Codes beyond a
table's alphabet are *escapes*, stored as varints in the block.

Modules: :mod:`.layout` (constants, bounds, block geometry), :mod:`.predict` (the
predictor and classes, shared by both sides), :mod:`.entropy` (tables, rANS models,
varints), :mod:`.encode` and :mod:`.stream` (the decoder).
"""
from __future__ import annotations

from .encode import CorrectionStats, encode_correction
from .entropy import _WEIGHTS, MAX_WEIGHT_CODE, weight_codes
from .layout import (_HEAD, BASE_MODES, DATA_MODES, DEFAULT_BLOCK, MAX_ALPHABET, MAX_BLOCK,
                     MIN_BLOCK, MODE_BASE, MODE_DATA_CUBIC, MODE_DATA_LINEAR, MODE_NAMES,
                     MODE_RESIDUAL_CUBIC, MODE_RESIDUAL_LINEAR, STREAM_VERSION,
                     BoundTooSmallError, block_grid, block_slices, cast_to,
                     quantization_bound)
from .stream import CorrectionStream, DecodedBlocks, decode_correction

# ``_HEAD`` and ``_WEIGHTS``: the stream header and weight table the spec tests read.
__all__ = ["_HEAD", "_WEIGHTS", "BASE_MODES", "DATA_MODES", "DEFAULT_BLOCK", "MAX_ALPHABET", "MAX_BLOCK",
           "MAX_WEIGHT_CODE", "MIN_BLOCK", "MODE_BASE", "MODE_DATA_CUBIC", "MODE_DATA_LINEAR",
           "MODE_NAMES", "MODE_RESIDUAL_CUBIC", "MODE_RESIDUAL_LINEAR", "STREAM_VERSION",
           "BoundTooSmallError", "CorrectionStats", "CorrectionStream", "DecodedBlocks",
           "block_grid", "block_slices", "cast_to", "decode_correction", "encode_correction",
           "quantization_bound", "weight_codes"]
