"""Training of volume models (sampling, loss, schedule)."""
from .sampling import VoxelSampler
from .trainer import FitResult, FitSettings, fit

__all__ = ["FitResult", "FitSettings", "VoxelSampler", "fit"]
