"""Deterministic robustness certificates: IBP, CROWN and CROWN-IBP bounds, verified accuracy.

>>> from smoothguard.verification import bounds, verify
>>> lower, upper = bounds(model, x, eps=0.1, norm="linf", method="crown")   # logits (N, K)
>>> res = verify(model, x, y, eps=0.1, method="crown")   # res.verified, res.margin_lb

Unlike randomized smoothing (a probabilistic l_2 certificate of a smoothed classifier),
these bounds certify the network itself, deterministically, for l_inf or l_2 balls; they
are practical for small networks (LeNet, Madry CNN), ideally trained for it with the
``ibp`` / ``crown_ibp`` objectives of :mod:`smoothguard.training`.
"""

from smoothguard.verification.bounds import (MAX_FLOATS, METHODS, NORMS, VerifyResult, bounds, input_box,
                                             margin_spec, spec_bounds, verify)
from smoothguard.verification.layers import SUPPORTED, VerificationError, to_ops

__all__ = ["MAX_FLOATS", "METHODS", "NORMS", "SUPPORTED", "VerificationError", "VerifyResult", "bounds",
           "input_box", "margin_spec", "spec_bounds", "to_ops", "verify"]
