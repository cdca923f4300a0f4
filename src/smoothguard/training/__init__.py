"""One trainer loop; objectives plug into it.

>>> from smoothguard.training import Trainer, TrainConfig, get_objective
>>> trainer = Trainer(model, get_objective("gaussian", noise_sd=0.25), TrainConfig(epochs=5))
>>> history = trainer.fit(train_set, test_set, out_dir="runs/lenet")
"""

from smoothguard.training.objectives import OBJECTIVES, Objective, StepContext, get_objective
from smoothguard.training.trainer import TrainConfig, Trainer, TrainCallback

__all__ = ["OBJECTIVES", "Objective", "StepContext", "get_objective", "TrainConfig", "Trainer", "TrainCallback"]
