"""Architectures that map [0, 1] images to logits, and safe checkpoints.

Every model built by :func:`get_model` is ``Sequential(Normalize(mean, std), net)``, so
attacks and smoothing work in pixel units and never see normalized inputs.
"""

from smoothguard.models.layers import Normalize
from smoothguard.models.registry import MODELS, get_model
from smoothguard.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    default_model_path,
    load_default_model,
)
from smoothguard.models.defenses import BitDepthReduction, MedianFilter, defended
from smoothguard.models.denoiser import DENOISERS, DenoisedClassifier, DnCNN, get_denoiser
from smoothguard.models.noise import NOISE_INJECTIONS, CNI, PNI, noise_generator, set_noise_injection
from smoothguard.models.rewrite import StridedMaxPool2d, pool_before_relu, strided_max_pools

__all__ = [
    "BitDepthReduction",
    "MedianFilter",
    "defended",
    "Normalize",
    "MODELS",
    "get_model",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "default_model_path",
    "load_default_model",
    "DENOISERS",
    "DenoisedClassifier",
    "DnCNN",
    "get_denoiser",
    "NOISE_INJECTIONS",
    "CNI",
    "PNI",
    "noise_generator",
    "set_noise_injection",
    "pool_before_relu",
    "strided_max_pools",
    "StridedMaxPool2d",
]
