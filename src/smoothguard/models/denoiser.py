"""Denoisers for denoised smoothing, and the composition x -> f(D(x)).

Salman, Sun, Yang, Kapoor and Kolter, "Denoised Smoothing: A Provable Defense for
Pretrained Classifiers" (NeurIPS 2020): an off-the-shelf classifier f (not trained on
noise) becomes certifiable by randomized smoothing of ``f(D(x + d))``, d ~ N(0, sigma^2 I),
where D is a denoiser trained for that sigma.

Contract: a denoiser maps [0, 1] images (N, C, H, W) to images of the same shape in the
same pixel units. Its output is **not clipped** to [0, 1]: the identity at initialization
must hold exactly, clipping would zero the gradient for out-of-range pixels during
training, and the classifier's own ``Normalize`` layer accepts any real input.

Denoiser checkpoints are ordinary smoothguard checkpoints with ``kind = "denoiser"``
(``arch``, ``in_shape`` and ``model_options`` in the metadata), so
:func:`~smoothguard.models.checkpoint.load_checkpoint` rebuilds them with no user code.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

# Paper setting (Salman et al. 2020, after Zhang et al. 2017): 17 layers of 64 channels.
PAPER_DEPTH, PAPER_WIDTH = 17, 64
# A CPU-sized default: ~1/20 of the paper's compute per pixel.
DEFAULT_DEPTH, DEFAULT_WIDTH = 8, 32


class DnCNN(nn.Module):
    """DnCNN (Zhang, Zuo, Chen, Meng and Zhang, IEEE TIP 2017) as a residual denoiser.

    ``D(x) = x + net(x)`` with ``net`` = conv3x3(C -> width) + ReLU, (depth - 2) x
    [conv3x3(width -> width) + ReLU], conv3x3(width -> C). The last convolution is
    zero-initialized, so an untrained DnCNN is exactly the identity; training moves it
    away from the identity only as far as the objective asks. There is **no
    normalization layer inside** (the original DnCNN has batch norm; we leave it out so
    the denoiser is a fixed function of its input whatever the batch, and in train and
    eval mode alike).

    Args:
        channels: C, image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        depth: number of convolutions, >= 2 (paper: 17; default 8).
        width: channels of the hidden convolutions, >= 1 (paper: 64; default 32).

    Inputs and outputs are [0, 1] pixel-unit images (N, C, H, W); outputs are not clipped.
    """

    def __init__(self, channels: int = 1, depth: int = DEFAULT_DEPTH, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ValueError(f"dncnn channels must be >= 1, got {channels}")
        if int(depth) < 2:
            raise ValueError(f"dncnn depth must be >= 2 convolutions (paper: {PAPER_DEPTH}), got {depth}")
        if int(width) < 1:
            raise ValueError(f"dncnn width must be >= 1 channel (paper: {PAPER_WIDTH}), got {width}")
        self.channels, self.depth, self.width = int(channels), int(depth), int(width)
        layers: list[nn.Module] = [nn.Conv2d(self.channels, self.width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(self.depth - 2):
            layers += [nn.Conv2d(self.width, self.width, 3, padding=1), nn.ReLU(inplace=True)]
        last = nn.Conv2d(self.width, self.channels, 3, padding=1)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # zero residual: D is the identity until trained
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, depth={self.depth}, width={self.width}"


_DENOISERS: dict[str, Callable[..., nn.Module]] = {
    "dncnn": lambda in_shape, **o: DnCNN(in_shape[0], **o),
}
DENOISERS = tuple(_DENOISERS)


def get_denoiser(name: str, in_shape: Sequence[int], **options) -> nn.Module:
    """Build a denoiser for images of shape ``in_shape`` = (C, H, W).

    Args:
        name: ``dncnn``.
        in_shape: (C, H, W) of the [0, 1] images it denoises.
        **options: architecture options, for ``dncnn``: ``depth`` (default 8, paper 17)
            and ``width`` (default 32, paper 64).
    """
    if name not in _DENOISERS:
        raise ValueError(f"unknown denoiser {name!r}; allowed: {', '.join(DENOISERS)}")
    in_shape = tuple(int(v) for v in in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    try:
        den = _DENOISERS[name](in_shape, **options)
    except TypeError as exc:
        raise ValueError(f"denoiser {name!r} does not take options {sorted(options)} ({exc})") from exc
    # the checkpoint metadata that rebuilds it (Trainer writes it; no meta= needed)
    den.in_shape = in_shape
    den.build_meta = {"kind": "denoiser", "arch": name, "in_shape": list(in_shape), "model_options": dict(options)}
    return den


class DenoisedClassifier(nn.Module):
    """``x -> classifier(denoiser(x))``: one model (logits out) for certification, attacks
    and evaluation. Randomized smoothing adds its noise to the input of this module, that
    is *before* the denoiser (Salman et al. 2020, eq. 2).

    The classifier is treated as fixed: ``train()`` switches only the denoiser's mode and
    the classifier stays in eval mode (its batch-norm statistics never move).
    """

    def __init__(self, classifier: nn.Module, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))

    def train(self, mode: bool = True) -> "DenoisedClassifier":
        self.training = mode
        self.denoiser.train(mode)
        self.classifier.eval()
        return self

