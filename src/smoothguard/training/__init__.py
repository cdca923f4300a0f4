"""One trainer loop; objectives plug into it.

>>> from smoothguard.training import Trainer, TrainConfig, get_objective
>>> trainer = Trainer(model, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=5))
>>> history = trainer.fit(train_set, test_set, out_dir="runs/lenet")
"""

from smoothguard.training.objectives import OBJECTIVES, Objective, StepContext, get_objective
from smoothguard.training.trainer import TrainConfig, Trainer, TrainCallback
from smoothguard.training.adversarial import PGDAT, TRADES, FastAT, FreeAT
from smoothguard.training.smoothing_objectives import Consistency, SmoothAdv, Stability
from smoothguard.training.certified_objectives import IBP, CrownIBP
from smoothguard.training.regularization import GradientRegularization

# robust-training objectives (issue 5): registered here so that every import of the
# package sees them in OBJECTIVES / get_objective
OBJECTIVES.update({
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
})

__all__ = ["FreeAT", "GradientRegularization", "IBP", "CrownIBP", "PGDAT", "TRADES", "FastAT", "SmoothAdv", "Stability", "Consistency", "OBJECTIVES", "Objective", "StepContext", "get_objective", "TrainConfig", "Trainer", "TrainCallback"]
