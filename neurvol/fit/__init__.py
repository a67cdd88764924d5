"""Training of volume models (sampling, loss, schedule)."""
from .sampling import VoxelSampler
from .trainer import FitResult, FitSettings, finetune, fit

__all__ = ["FitResult", "FitSettings", "VoxelSampler", "finetune", "fit"]
