"""The one table of training objectives: name -> class, declared here once (never
changed at import time). ``smoothguard train --objective NAME`` offers the classifier
objectives, ``train-denoiser`` the denoiser ones. Adding an objective is one line here
(plus its module and tests).
"""

from __future__ import annotations

from typing import Any, Callable

from smoothguard.training.adversarial import PGDAT, TRADES, FastAT, FreeAT
from smoothguard.training.certified_objectives import IBP, CrownIBP
from smoothguard.training.objectives import (
    DenoiserClassification,
    DenoiserMSE,
    DenoiserStability,
    Gaussian,
    Objective,
    Standard,
)
from smoothguard.training.regularization import GradientRegularization
from smoothguard.training.smoothing_objectives import Consistency, SmoothAdv, Stability

#: name -> objective class, in the order ``smoothguard train --help`` lists them.
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "standard": Standard,
    "gaussian": Gaussian,  # noise augmentation (Cohen et al. 2019), any smoothguard.noise distribution
    "denoiser_mse": DenoiserMSE,
    "denoiser_stability": DenoiserStability,
    "denoiser_classification": DenoiserClassification,
    # robust training (issue 5)
    "pgd_at": PGDAT,
    "trades": TRADES,
    "fast_at": FastAT,
    "smoothadv": SmoothAdv,
    "stability": Stability,
    "consistency": Consistency,
    # certified training (issue 20)
    "ibp": IBP,
    "crown_ibp": CrownIBP,
    # input-gradient regularization (issue 23)
    "gradreg": GradientRegularization,
    "free_at": FreeAT,
}
#: objectives that train a denoiser (``smoothguard train-denoiser``), not a classifier
DENOISER_OBJECTIVES: tuple[str, ...] = ("denoiser_mse", "denoiser_stability", "denoiser_classification")
#: objectives that train a classifier (``smoothguard train``)
CLASSIFIER_OBJECTIVES: tuple[str, ...] = tuple(o for o in OBJECTIVES if o not in DENOISER_OBJECTIVES)


def get_objective(name: str, **kwargs: Any) -> Objective:
    """Build an objective by name; keyword arguments are its hyper-parameters."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"objective {name!r}: bad options {sorted(kwargs)} ({exc})") from exc
