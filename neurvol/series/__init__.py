"""Time series and several variables in one ``.nvol`` file (``spec/series.md``): the
header layout and the reader. Encoding lives in :mod:`neurvol.encoding.series`."""
from .layout import (CORRECTION_SERIES_VERSION, KEY_SERIES, MAX_CORRECTION_STEPS,
                     MAX_GROUP_STEPS, MAX_NAME, MAX_STEPS, MAX_VARIABLES, SERIES_VERSION,
                     SeriesLayout, parse_series)
from .reader import (CorrectionMember, MemberVolume, NeuralSeries, SeriesVariable,
                     is_series_header, open_any)

__all__ = ["CORRECTION_SERIES_VERSION", "KEY_SERIES", "MAX_CORRECTION_STEPS", "MAX_GROUP_STEPS",
           "MAX_NAME", "MAX_STEPS", "MAX_VARIABLES", "SERIES_VERSION", "CorrectionMember",
           "MemberVolume", "NeuralSeries", "SeriesLayout", "SeriesVariable", "is_series_header",
           "open_any", "parse_series"]
