"""One default per concept, shared by the library and the command line.

The attack classes, :func:`smoothguard.evaluation.robustness.build_cascade` and the
``attack`` / ``evaluate`` commands all read their defaults from here, so that the Python
``PGD(model)`` and ``smoothguard attack --attack pgd`` attack the same threat model. The
README's "Defaults" table lists the same values (a test compares them).

Threat-model radii are in [0, 1] pixel units and sized for 28 x 28 grey-scale data
(Fashion-MNIST, the bundled default): l_inf 0.1 and l_2 1.0, the budgets of the project's
adversarial-training and evaluation experiments. MNIST papers use l_inf 0.3 (Madry et al.)
and CIFAR-10 papers 8/255 and 0.5: pass ``eps`` explicitly for those.
"""

from __future__ import annotations

from smoothguard.contract import check_norm

#: default radius of the threat model per norm (pixel units)
EPS = {"linf": 0.1, "l2": 1.0}

#: PGD (Madry et al. 2018): steps, and step size 2.5 eps / steps
PGD_STEPS = 40
#: APGD (Croce & Hein 2020) iterations, and FAB's
APGD_STEPS = 100
FAB_STEPS = 100
#: target classes of the targeted rows (APGD-T, FAB-T): AutoAttack's standard version
N_TARGETS = 9
#: Square attack (Andriushchenko et al. 2020): queries per point and initial fraction of
#: pixels per square, both AutoAttack's standard settings (the paper: 10,000 and 0.05)
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8
#: images per attack call (``attack --batch``, ``evaluate --batch``)
ATTACK_BATCH = 500


def default_eps(norm: str) -> float:
    """The default radius for ``norm`` ("linf" or "l2")."""
    return EPS[check_norm(norm)]
