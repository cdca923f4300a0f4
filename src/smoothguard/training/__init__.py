"""One trainer loop; objectives plug into it.

>>> from smoothguard.training import Trainer, TrainConfig, get_objective
>>> trainer = Trainer(model, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=5))
>>> history = trainer.fit(train_set, test_set, out_dir="runs/lenet")
"""

from smoothguard.training.objectives import Objective, StepContext
from smoothguard.training.trainer import TrainConfig, Trainer, TrainCallback
from smoothguard.training.adversarial import PGDAT, TRADES, FastAT, FreeAT
from smoothguard.training.smoothing_objectives import Consistency, SmoothAdv, Stability
from smoothguard.training.certified_objectives import IBP, CrownIBP
from smoothguard.training.regularization import GradientRegularization
# the one table of objectives (name -> class), declared in registry.py
from smoothguard.training.registry import OBJECTIVES, get_objective

__all__ = ["FreeAT", "GradientRegularization", "IBP", "CrownIBP", "PGDAT", "TRADES", "FastAT", "SmoothAdv", "Stability", "Consistency", "OBJECTIVES", "Objective", "StepContext", "get_objective", "TrainConfig", "Trainer", "TrainCallback"]
