"""Time series and several variables in one ``.nvol`` file (``spec/series.md``): the
header layout and the reader. Encoding lives in :mod:`neurvol.encoding.series`."""
from .layout import (KEY_SERIES, MAX_GROUP_STEPS, MAX_NAME, MAX_STEPS, MAX_VARIABLES,
                     SERIES_VERSION, SeriesLayout, parse_series)
from .reader import MemberVolume, NeuralSeries, SeriesVariable, is_series_header, open_any

__all__ = ["KEY_SERIES", "MAX_GROUP_STEPS", "MAX_NAME", "MAX_STEPS", "MAX_VARIABLES", "SERIES_VERSION",
           "MemberVolume", "NeuralSeries", "SeriesLayout", "SeriesVariable", "is_series_header",
           "open_any", "parse_series"]
