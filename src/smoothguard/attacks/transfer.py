"""Transfer attacks: craft on a surrogate model, evaluate on the target (Madry et al.
2018, Table 1: an independently trained copy A', a naturally trained A_nat, or a
different architecture B)."""

from __future__ import annotations

from torch import nn

from smoothguard.attacks.base import Attack, AttackOutput


class TransferAttack(Attack):
    """Run ``source_attack`` (built on a surrogate model) and report its examples
    against ``target_model``: ``run()``'s predictions and success are the target's.

    The threat model (norm, eps) and seed are the source attack's; the target model is
    only queried to report the result (no gradient, no adaptive queries).

    Example::

        src = PGD(surrogate, norm="linf", eps=0.1, steps=100)
        TransferAttack(src, target_model).run(x, y).robust_accuracy
    """

    name = "transfer"

    def __init__(self, source_attack: Attack, target_model: nn.Module, sanity_checks: bool = True) -> None:
        if not isinstance(source_attack, Attack):
            raise TypeError(f"source_attack must be a smoothguard Attack; got {type(source_attack).__name__}")
        if isinstance(source_attack, TransferAttack):
            raise ValueError("source_attack must be crafted on a surrogate model, not another TransferAttack")
        self.norms = (source_attack.norm,)
        self.minimal = source_attack.eps is None
        super().__init__(target_model, norm=source_attack.norm, eps=source_attack.eps,
                         seed=source_attack.seed, force=True, sanity_checks=sanity_checks)
        self.source_attack = source_attack

    def _attack(self, x, y, targets, gen) -> AttackOutput:
        res = self.source_attack.run(x, y, targets)
        return AttackOutput(res.x_adv.to(x.device), losses=res.losses, queries=None)
