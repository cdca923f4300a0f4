"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019).

>>> from smoothguard.smoothing import SmoothedClassifier, ABSTAIN
>>> g = SmoothedClassifier(model, num_classes=10, sigma=0.25)
>>> label, radius = g.certify(x, n0=100, n=100_000, alpha=0.001)
"""

from smoothguard import ABSTAIN
from smoothguard.smoothing.core import (
    NOISE_BLOCK,
    CertifyResult,
    PredictResult,
    SmoothedClassifier,
    image_seed,
)
from smoothguard.smoothing.sampler import Sampler
from smoothguard.smoothing.inference import VOTE_METHODS, SmoothedModel, smoothed_scores, vote_scores
from smoothguard.smoothing.sequential import BernoulliCS
from smoothguard.smoothing.stats import (
    binom_pvalue,
    certified_accuracy_lower_bound,
    lower_confidence_bound,
    r_max,
    radius_from_bound,
)

__all__ = [
    "ABSTAIN",
    "BernoulliCS",
    "NOISE_BLOCK",
    "CertifyResult",
    "PredictResult",
    "SmoothedClassifier",
    "Sampler",
    "SmoothedModel",
    "VOTE_METHODS",
    "smoothed_scores",
    "vote_scores",
    "image_seed",
    "binom_pvalue",
    "certified_accuracy_lower_bound",
    "lower_confidence_bound",
    "r_max",
    "radius_from_bound",
]
