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

# Batch sizes: one table per concept, keyed by device type ("cpu", "cuda"); a command
# resolves its ``--batch`` from the device it actually runs on when the flag is not given
# (:func:`batch_for`) and records the value used in its result sidecar.

#: noisy images per forward pass when sampling the smoothed classifier (``certify``,
#: ``predict``, ``demo``). Results do not depend on it for batches >= 100 (noise is drawn
#: per image in blocks of 100). CPU 400: the fastest measured on this project's CPUs;
#: CUDA 10,000: the batch of the H100 measurements in BENCHMARKS.md (1.5-2.4x the
#: straightforward sampler, which kept 400).
SAMPLING_BATCH = {"cpu": 400, "cuda": 10_000}
#: ``smooth-eval``: noisy images per forward pass of its votes and smoothed models. Kept
#: apart from SAMPLING_BATCH, at its old 1000 on every device: its NAttack targets
#: (SmoothedModels) average their noisy passes in chunks whose size follows the batch,
#: so the smoothed probabilities change in the last bits with it (on the CPU the
#: noise itself does not: a SmoothedModel's outputs at batch 400 differ from those at 1000
#: by 2.4e-7), which can move a decision; and the batch is not a resume key of its files,
#: so a changed default would silently mix the two in a resumed file. (Rows of 4
#: Fashion-MNIST images, pgd and nattack at m 1 and 8, were identical at 1000, 400, 150.)
SMOOTH_EVAL_BATCH = {"cpu": 1000, "cuda": 1000}
#: images per attack call (``attack --batch``, ``evaluate --batch``, ``evaluate_robustness``).
#: An attack's random starts are drawn per batch, so rows depend on it (a resume key of
#: ``attack``): 500 on CPU as before. CUDA also 500, as before: no GPU measurement here
#: says a larger one is better, and a changed default would refuse to resume existing
#: CUDA result files.
ATTACK_BATCH = {"cpu": 500, "cuda": 500}
#: ``verify``: images per bound computation, per method (the same on every device; rows do
#: not depend on it beyond float rounding). CROWN's memory and time grow with the square of
#: the widest layer, hence its smaller batch.
VERIFY_BATCH = {"ibp": 200, "crown_ibp": 200, "crown": 16}


def default_eps(norm: str) -> float:
    """The default radius for ``norm`` ("linf" or "l2")."""
    return EPS[check_norm(norm)]


def batch_for(table: dict[str, int], device, given: int | None = None) -> int:
    """The batch of a per-device ``table`` (SAMPLING_BATCH, SMOOTH_EVAL_BATCH, ATTACK_BATCH)
    for ``device``: a ``torch.device`` or its name ("cpu", "cuda", "cuda:1"). Device types
    without an entry of their own (mps, xpu, ...) take the CPU value. A ``given`` batch (a
    ``--batch`` flag, a ``batch_size`` argument) wins when it is not None."""
    if given is not None:
        return given
    kind = str(device).split(":", 1)[0]
    return table.get(kind, table["cpu"])


def describe_batch(table: dict[str, int]) -> str:
    """``table`` as help text: "400 on CPU, 10,000 on CUDA", or "500 on CPU and CUDA"
    where the values agree."""
    if len(set(table.values())) == 1:
        return f"{table['cpu']:,} on " + " and ".join(k.upper() for k in table)
    return ", ".join(f"{v:,} on {k.upper()}" for k, v in table.items())
