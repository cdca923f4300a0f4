"""Robust and non-robust training sets (Ilyas, Santurkar, Tsipras, Engstrom, Tran, Madry,
"Adversarial Examples Are Not Bugs, They Are Features", NeurIPS 2019).

Two constructions, each a new training set on which a *standard* model is then trained
with the one trainer (:class:`smoothguard.training.Trainer`, objective ``standard``):

* **the robust set D_R** (section 3.1): every training image x is replaced by an image x_r
  whose representation under a *robust* model matches x's, found from another start
  (another training image, or noise) by minimizing ``||g(x_r) - g(x)||_2`` over
  x_r in [0, 1] (:func:`match_representation`); the label stays y. Only the features the
  robust model uses survive, so a standard model trained on D_R should inherit some
  robustness.
* **the non-robust set D_det** (section 3.2): every image x of label y is perturbed by a
  small targeted l_2 attack on a *standard* model toward t = (y + 1) mod K and relabelled t
  (:func:`non_robust_examples`). To a human the new label is wrong; yet a standard model
  trained on D_det should still classify the original test set well above chance, because
  the attack put the non-robust features of class t into each image.

g is the penultimate-layer representation (docs/algorithms.md section 3): the input of the
model's last ``nn.Linear`` (:class:`Representation`; LeNet: the 500 ReLU activations before
the logits layer).

Paper settings (CIFAR-10, ResNet-50): D_R by normalized l_2 gradient descent, 1,000 steps of
0.1, from a random training image (or noise), representation of an l_2-robust model (eps
0.5); D_det: targeted l_2 PGD with eps 0.5, 100 steps of 0.1 on a standard model. Our
defaults scale these to 28 x 28 images (see each function and RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smoothguard.attacks import PGD
from smoothguard.attacks.base import eval_mode, lp_norms, normalize_grad
from smoothguard.contract import ContractError, check_choice, check_images, check_int, check_labels, check_positive
from smoothguard.data import Dataset
from smoothguard.utils import make_generator, model_device

STARTS = ("image", "noise")


class Representation(nn.Module):
    """g(x): the input of ``layer`` (default: the model's last ``nn.Linear``), flattened to
    (N, D), when the model runs on x. For the models of :func:`smoothguard.models.get_model`
    this is the penultimate layer (after the ReLU that precedes the logits layer).

    The forward pass stops at ``layer``'s input: the logits are not computed.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        super().__init__()
        if layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ContractError(
                    f"Representation: {type(model).__name__} has no nn.Linear layer; pass layer= naming the "
                    "module whose input is the representation")
            layer = linears[-1]
        elif not any(m is layer for m in model.modules()):
            raise ContractError("Representation: layer must be a sub-module of model")
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_module, inputs):
            captured.append(inputs[0])
            raise _Stop

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ContractError("Representation: the model's forward never reached the chosen layer")
        return captured[0].flatten(1)


class _Stop(Exception):
    """Ends the forward pass once the representation is captured."""


@dataclass
class MatchResult:
    """What :func:`match_representation` found, per example.

    Attributes:
        images: x_r, (N, C, H, W) in [0, 1]: the iterate of smallest distance.
        start_distance: ||g(x0) - g(x)||_2 at the start.
        distance: ||g(x_r) - g(x)||_2 at the returned x_r.
        target_norm: ||g(x)||_2 (to read the distances as relative errors).
    """

    images: torch.Tensor
    start_distance: torch.Tensor
    distance: torch.Tensor
    target_norm: torch.Tensor


def match_representation(
    model: nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    steps: int = 1000,
    step_size: float = 0.1,
    layer: nn.Module | None = None,
) -> MatchResult:
    """Minimize ``||g(x_r) - g(x)||_2`` over x_r in [0, 1], starting at x_r = x0
    (Ilyas et al. 2019, section 3.1 and appendix C.4).

    Normalized l_2 gradient descent: ``x_r <- clip_[0,1](x_r - step_size * grad / ||grad||_2)``
    per example, ``steps`` times; the step length is in [0, 1] pixel units (l_2 norm over the
    whole image). With a fixed normalized step the iterates oscillate near a minimum, so
    the iterate of smallest distance is returned, not the last one.

    Args:
        model: images in [0, 1] -> logits; g is :class:`Representation` (``layer``). It is put
            in eval mode for the descent and every module's flag is restored afterwards;
            its parameters' gradients are not touched.
        x: the images whose representation to match, (N, C, H, W) in [0, 1].
        x0: the starts, same shape, in [0, 1] (another image, or noise).
        steps: gradient steps (paper: 1,000).
        step_size: l_2 length of each step (paper: 0.1 on CIFAR-10).
    """
    x = check_images(x, "x", single=False)
    x0 = check_images(x0, "x0", single=False)
    if x0.shape != x.shape:
        raise ContractError(f"x0 must have the shape of x {tuple(x.shape)}; got {tuple(x0.shape)}")
    steps = check_int("steps", steps, 1)
    step_size = check_positive("step_size", step_size)
    g = Representation(model, layer)
    device = model_device(model)
    x, xr = x.detach().to(device), x0.detach().to(device).clone()
    with eval_mode(model):
        with torch.no_grad():
            target = g(x)
        best = xr.clone()
        best_dist = None
        start_dist = None
        # torch.autograd.grad w.r.t. x_r only: the parameters' .grad is never written
        for k in range(steps + 1):
            xr.requires_grad_(True)
            with torch.enable_grad():
                dist = (g(xr) - target).norm(dim=1)
                grad = None if k == steps else torch.autograd.grad(dist.sum(), xr)[0]
            d = dist.detach()
            xr = xr.detach()
            if best_dist is None:
                start_dist, best_dist = d.clone(), d.clone()
            else:
                better = d < best_dist
                best[better] = xr[better]
                best_dist = torch.where(better, d, best_dist)
            if grad is None:
                break
            xr = (xr - step_size * normalize_grad(grad, "l2")).clamp(0.0, 1.0)
    return MatchResult(best, start_dist, best_dist, target.norm(dim=1))


def robust_dataset(
    model: nn.Module,
    data: Dataset,
    steps: int = 1000,
    step_size: float = 0.1,
    start: str = "image",
    batch_size: int = 500,
    seed: int = 0,
    layer: nn.Module | None = None,
) -> tuple[Dataset, MatchResult]:
    """The robust training set D_R of Ilyas et al. (2019): each image of ``data`` replaced by
    :func:`match_representation` of it under ``model`` (a robust model), label unchanged.

    ``start``: ``"image"`` starts each image from another image of ``data`` (a seeded random
    derangement: never the image itself), ``"noise"`` from uniform noise in [0, 1] (the
    paper's two options). Returns the new dataset (same info and indices) and the match
    statistics over all images.
    """
    check_choice("start", start, STARTS)
    batch_size = check_int("batch_size", batch_size, 1)
    steps = check_int("steps", steps, 1)
    step_size = check_positive("step_size", step_size)
    n = len(data)
    if n < 2 and start == "image":
        raise ContractError("robust_dataset with start='image' needs at least 2 images (each starts from another)")
    gen = make_generator(seed)
    if start == "image":
        # a random derangement: a random permutation composed with a cyclic shift of its order
        perm = torch.randperm(n, generator=gen)
        src = torch.empty(n, dtype=torch.long)
        src[perm] = perm.roll(1)
        starts = data.images[src]
    else:
        starts = torch.rand(data.images.shape, generator=gen)
    parts: list[MatchResult] = []
    for i in range(0, n, batch_size):
        parts.append(match_representation(model, data.images[i:i + batch_size], starts[i:i + batch_size],
                                          steps=steps, step_size=step_size, layer=layer))
    res = MatchResult(*(torch.cat([getattr(p, f) for p in parts]).cpu()
                        for f in ("images", "start_distance", "distance", "target_norm")))
    return Dataset(res.images, data.labels.clone(), data.info, data.indices.clone()), res


def next_class_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """t = (y + 1) mod K, the deterministic targets of D_det."""
    num_classes = check_int("num_classes", num_classes, 2)
    y = check_labels(y, num_classes, name="y")
    return (y + 1) % num_classes


def non_robust_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    step_size: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targeted l_2 PGD toward t = (y + 1) mod K on ``model`` (a standard model), Ilyas et al.
    2019, section 3.2: returns (x_adv, t, the model's predictions on x_adv).

    Uses :class:`smoothguard.attacks.PGD` (l_2, cross-entropy toward t, no random start) and
    keeps its *last* iterate after all ``steps``: the paper minimizes the targeted loss for the
    full budget rather than stopping at the first point classified as t, so that the
    target's features are strongly present. ``||x_adv - x||_2 <= eps`` and x_adv in [0, 1].

    Args:
        eps: l_2 radius in [0, 1] pixel units (paper: 0.5 on CIFAR-10).
        steps: PGD steps (paper: 100).
        step_size: l_2 step (None: 2.5 eps / steps; paper: 0.1 at eps 0.5 and 100 steps).
    """
    eps = check_positive("eps", eps)
    steps = check_int("steps", steps, 1)
    device = model_device(model)
    x = check_images(x, "x", single=False).to(device)
    with torch.no_grad(), eval_mode(model):
        num_classes = int(model(x[:1]).shape[1])
    t = next_class_targets(check_labels(y, count=x.shape[0], name="y").to(device), num_classes)
    atk = PGD(model, norm="l2", eps=eps, steps=steps, step_size=step_size, random_start=False, seed=seed,
              sanity_checks=False)
    atk.return_last = True
    res = atk.run(x, y.to(device), targets=t)
    return res.x_adv, t, res.adv_pred


@dataclass
class NonRobustStats:
    """Per example: the l_2 norm of the perturbation and whether the source model
    classifies x_adv as the target."""

    norms: torch.Tensor
    target_hit: torch.Tensor


def non_robust_dataset(
    model: nn.Module,
    data: Dataset,
    eps: float,
    steps: int = 100,
    step_size: float | None = None,
    batch_size: int = 500,
    seed: int = 0,
) -> tuple[Dataset, NonRobustStats]:
    """The non-robust training set D_det of Ilyas et al. (2019): every image of ``data``
    moved by :func:`non_robust_examples` and labelled with its target (y + 1) mod K.
    Returns the new dataset (same info and indices) and per-example statistics."""
    batch_size = check_int("batch_size", batch_size, 1)
    xs, ts, hits = [], [], []
    for i in range(0, len(data), batch_size):
        x, y = data.images[i:i + batch_size], data.labels[i:i + batch_size]
        x_adv, t, pred = non_robust_examples(model, x, y, eps, steps=steps, step_size=step_size, seed=seed + i)
        xs.append(x_adv.cpu())
        ts.append(t.cpu())
        hits.append((pred == t).cpu())
    images, targets = torch.cat(xs), torch.cat(ts)
    stats = NonRobustStats(lp_norms(images - data.images, "l2"), torch.cat(hits))
    return Dataset(images, targets, data.info, data.indices.clone()), stats
