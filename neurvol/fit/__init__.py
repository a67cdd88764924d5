"""Training of volume models (sampling, loss, schedule)."""
from .sampling import VoxelSampler
from .trainer import FitResult, FitSettings, Regularizer, finetune, fit

__all__ = ["FitResult", "FitSettings", "Regularizer", "VoxelSampler", "finetune", "fit"]
