"""smoothguard: adversarial robustness for PyTorch.

Attack a model honestly, train it to resist, and certify it with randomized smoothing.
Every model maps images in [0, 1] pixel space, shape (N, C, H, W), to logits (N, K);
normalization lives inside the model; eps, sigma and radii are in [0, 1] pixel units;
``ABSTAIN == -1``.
"""

__version__ = "0.1.0"

ABSTAIN = -1

__all__ = ["__version__", "ABSTAIN"]
