"""``smoothguard train`` options of the robust-training objectives (issue 5).

Each flag maps to one keyword of the objective's constructor. Flags default to None,
meaning "the objective's own (paper) default", so a flag given explicitly to an objective
that does not take it is an error instead of being silently ignored.
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothguard.models.noise import NOISE_INJECTIONS

# flag dest -> objective keyword
_KEYWORD = {"smoothadv_attack": "attack"}

# objective -> the flags (argparse dests) it takes
OBJECTIVE_FLAGS: dict[str, tuple[str, ...]] = {
    "standard": (),
    "gaussian": ("noise_sd", "noise"),
    "pgd_at": ("eps", "norm", "attack_steps", "step_size", "adv_weight", "no_random_start"),
    "fast_at": ("eps", "norm", "step_size", "adv_weight"),
    "trades": ("beta", "eps", "norm", "attack_steps", "step_size"),
    "smoothadv": ("noise_sd", "eps", "smoothadv_attack", "m_train", "attack_steps", "warmup_epochs"),
    "stability": ("noise_sd", "lbd"),
    "consistency": ("noise_sd", "m_train", "lbd", "eta"),
    "gradreg": ("lbd",),
    "free_at": ("eps", "replays", "step_size"),
    "ibp": ("eps", "norm", "warmup", "ramp", "kappa_start", "kappa_end"),
    "crown_ibp": ("eps", "norm", "warmup", "ramp", "kappa_start", "kappa_end", "beta_start", "beta_end"),
}
_ALL_FLAGS = sorted({f for flags in OBJECTIVE_FLAGS.values() for f in flags})


def add_objective_arguments(p: argparse.ArgumentParser) -> None:
    """The objectives' hyper-parameters (all except --noise-sd, which train.py defines)."""
    g = p.add_argument_group(
        "robust-training objectives (defaults: each objective's paper setting, see its docstring)")
    g.add_argument("--eps", type=float, default=None,
                   help="attack radius in [0,1] pixel units (pgd_at/fast_at/trades: default 0.3 l_inf; "
                        "smoothadv: l_2, default 0.5; ibp/crown_ibp: training radius, default 0.2 l_inf)")
    g.add_argument("--norm", default=None, choices=["linf", "l2"], help="pgd_at/fast_at/trades threat model (default linf)")
    g.add_argument("--attack-steps", type=int, default=None,
                   help="attack iterations per batch (pgd_at/trades default 40; smoothadv default 2)")
    g.add_argument("--step-size", type=float, default=None,
                   help="attack step in pixel units (pgd_at/trades default 2.5*eps/steps; fast_at 1.25*eps)")
    g.add_argument("--adv-weight", type=float, default=None,
                   help="pgd_at/fast_at: weight in (0,1] of the adversarial CE, 1 - it on clean CE (default 1: "
                        "adversarial only, as Madry et al.)")
    g.add_argument("--no-random-start", action="store_const", const=True, default=None,
                   help="pgd_at: start PGD at x instead of a uniform random point of the ball")
    g.add_argument("--beta", type=float, default=None, help="trades: weight of the KL term (default 6)")
    g.add_argument("--smoothadv-attack", default=None, choices=["pgd", "ddn"],
                   help="smoothadv: SmoothAdvPGD or SmoothAdvDDN (default pgd)")
    g.add_argument("--m-train", type=int, default=None,
                   help="smoothadv/consistency: noise draws per image (default 2)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help="smoothadv: eps grows linearly to --eps over this many epochs (default 1: no warm-up)")
    g.add_argument("--lbd", type=float, default=None,
                   help="stability/consistency: weight lambda of the KL term (default 1 / 10); gradreg: weight of "
                        "the squared input-gradient norm (default 1)")
    g.add_argument("--replays", type=int, default=None,
                   help="free_at: optimizer steps per minibatch, each also updating the perturbation (default 8; "
                        "train for epochs / replays to match natural training's gradient computations)")
    g.add_argument("--eta", type=float, default=None, help="consistency: weight of the entropy term (default 0.5)")
    g.add_argument("--warmup", type=float, default=None,
                   help="ibp/crown_ibp: fraction of training steps with eps 0 (default 2/60 ibp, 10/200 crown_ibp)")
    g.add_argument("--ramp", type=float, default=None,
                   help="ibp/crown_ibp: fraction of training steps over which eps, kappa (and beta) move "
                        "(default 10/60 ibp, 50/200 crown_ibp)")
    g.add_argument("--kappa-start", type=float, default=None, help="ibp/crown_ibp: clean-loss weight at the start "
                                                                   "of the ramp (default 1)")
    g.add_argument("--kappa-end", type=float, default=None,
                   help="ibp/crown_ibp: clean-loss weight after the ramp (default 0.5 ibp, 0 crown_ibp)")
    g.add_argument("--beta-start", type=float, default=None,
                   help="crown_ibp: weight of the CROWN-IBP margins at the start of the ramp (default 1)")
    g.add_argument("--beta-end", type=float, default=None,
                   help="crown_ibp: weight of the CROWN-IBP margins after the ramp (default 0: pure IBP)")
    p.add_argument("--noise-injection", default=None, choices=list(NOISE_INJECTIONS),
                   help="lenet/madry_cnn: learned noise layers (PNI on weights/activations/both, or CNI "
                        "colored weight noise); active in eval too")


def objective_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``args.objective`` from the flags; a flag the objective
    does not take is an error naming the flags it does take."""
    if args.objective not in OBJECTIVE_FLAGS:  # other objectives (e.g. denoisers) parse their own flags
        return {}
    allowed = OBJECTIVE_FLAGS[args.objective]
    given = [f for f in _ALL_FLAGS if getattr(args, f, None) is not None]
    wrong = [f for f in given if f not in allowed]
    if wrong:
        def flag(d: str) -> str:
            return "--" + d.replace("_", "-")
        takes = ", ".join(flag(f) for f in allowed) or "no options"
        verb = "does" if len(wrong) == 1 else "do"
        raise ValueError(f"{', '.join(flag(f) for f in wrong)} {verb} not apply to --objective {args.objective} "
                         f"(it takes: {takes})")
    kwargs: dict[str, Any] = {}
    for f in given:
        if f == "no_random_start":
            kwargs["random_start"] = False
        else:
            kwargs[_KEYWORD.get(f, f)] = getattr(args, f)
    return kwargs
