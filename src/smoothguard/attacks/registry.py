"""The one table of attacks: name -> class, the norms it supports, the options of
``smoothguard attack`` it takes and its paper defaults.

:data:`ATTACKS` (every attack class by its ``name``) and :data:`COMMAND_ATTACKS` (those
``smoothguard attack --attack NAME`` offers, in its order) are built from
:data:`REGISTRY` and never changed at import time. Adding an attack is one
:class:`AttackEntry` line here (plus its module and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smoothguard.attacks.apgd import APGD
from smoothguard.attacks.base import Attack
from smoothguard.attacks.cw import CW
from smoothguard.attacks.ddn import DDN
from smoothguard.attacks.fab import FAB
from smoothguard.attacks.fgsm import FGM, FGSM
from smoothguard.attacks.nattack import NAttack
from smoothguard.attacks.pgd import PGD
from smoothguard.attacks.smooth import EPGD, SmoothAdvDDN, SmoothAdvPGD
from smoothguard.attacks.square import Square
from smoothguard.defaults import APGD_STEPS, FAB_STEPS, PGD_STEPS, SQUARE_QUERIES

#: The command's options an attack may take, and the constructor argument each becomes.
OPTION_ARGUMENTS = {"norm": "norm", "steps": "steps", "step_size": "step_size", "restarts": "restarts",
                    "loss": "loss", "eot": "eot", "queries": "max_queries"}


@dataclass(frozen=True)
class AttackEntry:
    """One attack: its class, the command options it takes (keys of
    :data:`OPTION_ARGUMENTS`; ``eps`` and ``seed`` always), the defaults the command uses
    for ``steps`` / ``queries`` when they are not given (the papers' settings), and
    whether ``smoothguard attack`` offers it."""

    cls: type[Attack]
    options: tuple[str, ...] = ()
    default_steps: int | None = None
    default_queries: int | None = None
    command: bool = True

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.cls.norms)

    def takes(self, option: str) -> bool:
        return option in self.options

    def build(self, model, eps: float | None, *, norm: str = "linf", steps: int | None = None,
              step_size: float | None = None, restarts: int = 1, loss: str = "ce", eot: int = 1,
              queries: int | None = None, seed: int | None = None) -> Attack:
        """The attack with the command's options (those it does not take are left out)."""
        given = {"norm": norm, "steps": steps if steps is not None else self.default_steps,
                 "step_size": step_size, "restarts": restarts, "loss": loss, "eot": eot,
                 "queries": queries if queries is not None else self.default_queries}
        kwargs: dict[str, Any] = {OPTION_ARGUMENTS[o]: given[o] for o in self.options}
        return self.cls(model, eps=eps, seed=seed, **kwargs)


_GRAD = ("eot",)
#: Every attack, in the order ``smoothguard attack --help`` lists them.
REGISTRY: tuple[AttackEntry, ...] = (
    # Madry et al. 2018: 40 steps, step 2.5 eps / steps, random start
    AttackEntry(PGD, ("norm", "steps", "step_size", "restarts", "loss") + _GRAD, default_steps=PGD_STEPS),
    AttackEntry(FGSM, ("loss",) + _GRAD),
    AttackEntry(FGM, ("loss",) + _GRAD),
    # Croce & Hein 2020: 100 iterations
    AttackEntry(APGD, ("norm", "steps", "restarts", "loss") + _GRAD, default_steps=APGD_STEPS),
    # Carlini & Wagner 2017: 1000 iterations (l2, minimal)
    AttackEntry(CW, ("steps",), default_steps=1000),
    # Rony et al. 2019: 100 iterations (l2, minimal)
    AttackEntry(DDN, ("steps", "loss") + _GRAD, default_steps=100),
    # Andriushchenko et al. 2020 (AutoAttack's budget, smoothguard.defaults) / Li et al. 2019
    AttackEntry(Square, ("norm", "queries"), default_queries=SQUARE_QUERIES),
    AttackEntry(NAttack, ("norm", "queries"), default_queries=10_000),
    # Croce & Hein 2020: 100 iterations (minimal norm, or eps-bounded)
    AttackEntry(FAB, ("norm", "steps", "restarts"), default_steps=FAB_STEPS),
    # attacks on smoothed models (library only: their settings are those of smoothing)
    AttackEntry(EPGD, command=False),
    AttackEntry(SmoothAdvPGD, command=False),
    AttackEntry(SmoothAdvDDN, command=False),
)

#: name -> attack class (every attack).
ATTACKS: dict[str, type[Attack]] = {e.name: e.cls for e in REGISTRY}
#: name -> entry of the attacks ``smoothguard attack`` offers.
COMMAND_ATTACKS: dict[str, AttackEntry] = {e.name: e for e in REGISTRY if e.command}
#: Attacks that run on a smoothed (noisy) model: their rows are decisions of the smoothed
#: classifier (the report plots them beside certified accuracy).
SMOOTHED_ATTACKS: tuple[str, ...] = ("smoothadv", "smoothadv-pgd", "smoothadv-ddn", EPGD.name)


def get_attack_entry(name: str) -> AttackEntry:
    """The entry of a ``smoothguard attack`` attack, or a ValueError naming the allowed ones."""
    if name not in COMMAND_ATTACKS:
        raise ValueError(f"--attack must be one of {', '.join(COMMAND_ATTACKS)}; got {name!r}")
    return COMMAND_ATTACKS[name]
