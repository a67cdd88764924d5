"""Training of volume models (sampling, loss, schedule)."""
from .sampling import VoxelSampler
from .trainer import FitResult, FitSettings, Fitting, Regularizer, finetune, fit

__all__ = ["FitResult", "FitSettings", "Fitting", "Regularizer", "VoxelSampler", "finetune", "fit"]
