"""Adversarial attacks on models that map [0, 1] images to logits.

White-box: :class:`FGSM` (l_inf), :class:`FGM` (l_2), :class:`PGD`, :class:`APGD`,
:class:`CW` (l_2, minimal), :class:`DDN` (l_2, minimal), :class:`FAB` (minimal); for smoothed / noisy models:
:class:`EPGD`, :class:`SmoothAdvPGD`, :class:`SmoothAdvDDN` and the ``eot`` option of
every gradient attack; black-box: :class:`Square`, :class:`NAttack`; and
:class:`TransferAttack`. All share :class:`~smoothguard.attacks.base.Attack`:
``atk(x, y, targets=None) -> x_adv`` and ``atk.run(...) -> AttackResult``.

    >>> from smoothguard.attacks import PGD
    >>> x_adv = PGD(model, norm="linf", eps=0.1, steps=40, restarts=10)(x, y)
"""

from smoothguard.attacks.apgd import APGD
from smoothguard.attacks.base import (
    NORMS,
    Attack,
    AttackResult,
    GradientAttack,
    lp_norms,
    project,
    random_start,
)
from smoothguard.attacks.bpda import BPDA
from smoothguard.attacks.cw import CW
from smoothguard.attacks.ddn import DDN
from smoothguard.attacks.fab import FAB
from smoothguard.attacks.fgsm import FGM, FGSM
from smoothguard.attacks.losses import LOSSES, ce_loss, cw_loss, dlr_loss
from smoothguard.attacks.nattack import NAttack
from smoothguard.attacks.pgd import PGD
from smoothguard.attacks.sanity import (
    RobustnessWarning,
    check_blackbox_vs_whitebox,
    check_gradients,
    check_logits,
    check_stochastic,
)
from smoothguard.attacks.smooth import EPGD, SmoothAdvDDN, SmoothAdvPGD
from smoothguard.attacks.square import Square
from smoothguard.attacks.transfer import TransferAttack

from smoothguard.attacks.registry import ATTACKS  # noqa: E402 - the one name -> class table

__all__ = [
    "ATTACKS",
    "APGD",
    "BPDA",
    "Attack",
    "AttackResult",
    "CW",
    "DDN",
    "EPGD",
    "FAB",
    "FGM",
    "FGSM",
    "GradientAttack",
    "LOSSES",
    "NAttack",
    "NORMS",
    "PGD",
    "RobustnessWarning",
    "SmoothAdvDDN",
    "SmoothAdvPGD",
    "Square",
    "TransferAttack",
    "ce_loss",
    "check_blackbox_vs_whitebox",
    "check_gradients",
    "check_logits",
    "check_stochastic",
    "cw_loss",
    "dlr_loss",
    "lp_norms",
    "project",
    "random_start",
]
