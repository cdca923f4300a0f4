"""Randomized smoothing: the smoothed classifier, its PREDICT and CERTIFY.

g(x) = argmax_c P[f(x + d) = c], d ~ N(0, sigma^2 I), with f the base classifier
(Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019). ``f`` is any ``nn.Module`` mapping [0, 1] images to logits, or
any callable returning logits (N, K) or labels (N,) (a query-only classifier).

One sampler serves every method. It draws the noise of each image from that image's own
generator in fixed blocks of ``NOISE_BLOCK`` samples and packs blocks of several images
into each forward batch, so (i) small sample counts still fill the batch, (ii) with a
seed per image the counts of an image depend only on its seed (not on the other images
of the call, and not on the batch size when it is a multiple of the block), and (iii)
there is no Python loop over samples: noise is generated in place in the batch buffer,
counts are accumulated with one ``index_add_`` per batch on the device, and the host
reads them once per call.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from smoothguard import ABSTAIN
from smoothguard.contract import (ContractError, check_alpha, check_choice, check_images, check_int, check_logits,
                                  check_sigma, forward_errors)
from smoothguard.models.rewrite import pool_before_relu, strided_max_pools
from smoothguard.noise import Noise, get_noise
from smoothguard.smoothing.stats import binom_pvalue, lower_confidence_bound
from smoothguard.utils import cpu_has_native_bf16, derive_seed, make_generator, model_device

NOISE_BLOCK = 100  # noise samples per block of one image (see the module docstring)
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

BaseClassifier = nn.Module | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CertifyResult:
    """Per-image results of :meth:`SmoothedClassifier.certify_batch`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    radius: torch.Tensor  # float64 (B,), 0.0 on abstention
    p_lower: torch.Tensor  # float64 (B,), the Clopper-Pearson lower bound on p_A
    counts_selection: torch.Tensor  # int64 (B, K)
    counts_estimation: torch.Tensor  # int64 (B, K)
    norm: str = "l2"  # the norm the radius is certified in (the noise's: l2 for Gaussian, l1 for uniform/Laplace)


@dataclass
class PredictResult:
    """Per-image results of :meth:`SmoothedClassifier.predict_batch`."""

    prediction: torch.Tensor  # int64 (B,), ABSTAIN = -1
    pvalue: torch.Tensor  # float64 (B,)
    counts: torch.Tensor  # int64 (B, K)


class SmoothedClassifier:
    """The smoothed classifier g of a base classifier f under noise of sd sigma (Gaussian by default).

    Args:
        base_classifier: ``nn.Module`` or callable on [0, 1] images (N, C, H, W) returning
            logits (N, K) or integer labels (N,). Noise is added in pixel space, before
            the model's own normalization layer, and is not clipped.
        num_classes: K.
        sigma: noise standard deviation in [0, 1] pixel units (> 0).
        precision: ``fp32`` (default, exact arithmetic of the model) or ``bf16``
            (autocast; faster on CPUs and GPUs with bf16 units, may flip a few votes; on a
            CPU without bf16 instructions it is slower than fp32 and a warning says so).
        memory_format: ``auto`` (channels_last on CPU for modules, where it is faster),
            ``channels_last`` or ``contiguous``. A module is converted to channels_last
            *in place* (``module.to(memory_format=...)``, no copy of the weights): only
            the layout of its weights changes, never their values; pass a copy to keep
            the original layout.
        jit: trace and freeze the module with TorchScript for inference (fuses conv and
            ReLU, folds batch norm). Checked against the eager model on the first batch
            (and a smaller one); when tracing fails, warns that the trace may depend on
            the data, or outputs differ beyond float rounding, a warning is raised and
            the eager model is used. ``True`` then times both once, on a batch of the
            sampler's batch size, and keeps the faster (the frozen graph was 1.2x faster for the Madry CNN and 1.1-1.5x
            *slower* for LeNet on this CPU); ``"always"`` keeps the frozen one.
        workers: forward passes run concurrently in this many threads while the main
            thread draws the next batch's noise (results are identical to workers=1).
            On a CPU, workers=2 with ``torch.set_num_threads(1)`` uses two cores better
            than one forward pass on two intra-op threads for small models.
        rewrite: run a module through :func:`smoothguard.models.rewrite.pool_before_relu`
            (``ReLU -> MaxPool`` becomes ``MaxPool -> ReLU`` in its ``nn.Sequential``
            containers: bit-identical outputs) and then
            :func:`~smoothguard.models.rewrite.strided_max_pools` (non-overlapping max
            pooling without aten's index tensor: equal values; the sampler takes no
            gradients). Shared weights, the module itself untouched; LeNet 1.5x faster on
            the AVX-512 CPU, a further ~1.1x on the AVX2 one. ``False`` runs it as given.
        noise: ``"gaussian"`` (default; l_2 certificates), ``"uniform"`` or ``"laplace"``
            (l_1 certificates), or a :class:`smoothguard.noise.Noise`; ``sigma`` is its
            standard deviation per pixel (see :mod:`smoothguard.noise`).
        in_shape: (C, H, W) of the inputs, checked on every call (default: the module's
            ``in_shape`` attribute, which models built by ``get_model`` carry).

    Inputs follow the contract of :mod:`smoothguard.contract`: float images in [0, 1],
    finite, (B, C, H, W) or one (C, H, W); a base classifier that returns non-finite logits
    is an error (:class:`~smoothguard.contract.ContractError`), never a vote.
    """

    def __init__(
        self,
        base_classifier: BaseClassifier,
        num_classes: int,
        sigma: float,
        *,
        precision: str = "fp32",
        memory_format: str = "auto",
        jit: bool | str = False,
        workers: int = 1,
        rewrite: bool = True,
        device: torch.device | str | None = None,
        in_shape: Sequence[int] | None = None,
        noise: str | Noise = "gaussian",
    ) -> None:
        if not callable(base_classifier):
            raise TypeError("base_classifier must be an nn.Module or a callable")
        num_classes = check_int("num_classes", num_classes, minimum=2)
        sigma = check_sigma(sigma)
        check_choice("precision", precision, PRECISIONS)
        check_choice("memory_format", memory_format, MEMORY_FORMATS)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self.noise = get_noise(noise, sigma)  # what is added, and the norm and radius it certifies
        # (C, H, W) the inputs must have: given, else the model's own (models from get_model carry it)
        shape = in_shape if in_shape is not None else getattr(base_classifier, "in_shape", None)
        self.in_shape = None if shape is None else tuple(check_int("in_shape", v) for v in shape)
        self.precision = precision
        is_module = isinstance(base_classifier, nn.Module)
        self.device = torch.device(device) if device is not None else (
            model_device(base_classifier) if is_module else torch.device("cpu"))
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("precision='bf16' on a CPU without bf16 instructions (AVX-512 BF16 or AMX): PyTorch "
                          "emulates it, about 5x slower than fp32 on the AVX2 machine of BENCHMARKS.md; "
                          "precision='fp32' is faster here", RuntimeWarning, stacklevel=2)
        if memory_format == "auto":
            memory_format = "channels_last" if (is_module and self.device.type == "cpu") else "contiguous"
        self.memory_format = memory_format
        self.workers = check_int("workers", workers, minimum=1)
        if not any(jit is v for v in (False, True)) and jit != "always":
            raise ContractError(f"jit must be False, True or 'always', got {jit!r}")
        self.jit = jit if is_module else False
        # what the sampler runs: the base classifier, or its exact rewrite (shared weights)
        self._module: BaseClassifier = base_classifier
        if is_module:
            base_classifier.eval()
            if memory_format == "channels_last":
                base_classifier.to(memory_format=torch.channels_last)
            if rewrite:  # exact: the sampler's outputs do not change (only under inference_mode)
                self._module = strided_max_pools(pool_before_relu(base_classifier)[0])[0]
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None if self.jit else self._module
        self._timing_rows = 1  # the sampler's batch size, for the jit timing check

    # ------------------------------------------------------------------ sampling
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format

    def _autocast(self):
        return (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                if self.precision == "bf16" else contextlib.nullcontext())

    def _trace(self, batch: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """TorchScript-frozen copy of the module, verified on ``batch``; the eager module otherwise."""
        model = self._module
        try:
            with self._autocast(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, batch)))
                # a TracerWarning means the trace may bake in data-dependent control flow
                bad = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
                if bad:
                    raise RuntimeError(f"the trace may be wrong: {str(bad[0].message).splitlines()[0]}")
                for probe in (batch, batch[: max(1, batch.shape[0] // 3)]):
                    a, b = frozen(probe).float(), model(probe).float()
                    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3):
                        raise RuntimeError("traced outputs differ from the eager model's")
                if self.jit != "always":
                    # timed at the size of the sampler's full batches, not of this (maybe small) first one
                    rows = max(batch.shape[0], self._timing_rows)
                    probe = torch.cat([batch] * math.ceil(rows / batch.shape[0]))[:rows]
                    probe = probe.contiguous(memory_format=self._memory_format())
                    t_frozen, t_eager = _time_forwards((frozen, model), probe)
                    if t_frozen >= t_eager:
                        return model
            return frozen
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use eager
            warnings.warn(f"jit=True: cannot trace the model ({exc}); using the eager model", RuntimeWarning,
                          stacklevel=3)
            return model

    def _raw(self, batch: torch.Tensor) -> torch.Tensor:
        """The base classifier's outputs (logits or labels) under this classifier's
        precision and, with ``jit``, its frozen copy."""
        if self._forward is None:
            self._forward = self._trace(batch)
        with self._autocast():
            return self._forward(batch)

    def _classify(self, batch: torch.Tensor) -> torch.Tensor:
        with forward_errors(batch.shape[1:], "the base classifier"):
            out = self._raw(batch)
        if out.dim() == 1:  # a label function (query-only classifier): check before counting
            if out.dtype.is_floating_point or out.dtype.is_complex or out.dtype == torch.bool:
                raise ContractError(f"base classifier returned labels of dtype {out.dtype}; expected integers")
            labels = out.to(device=self.device, dtype=torch.int64)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ContractError(f"base classifier returned a label outside [0, {self.num_classes}) "
                                    f"(min {int(labels.min())}, max {int(labels.max())})")
        elif out.dim() == 2:
            # finite logits only: argmax of a NaN row is class 0, which would be counted as a vote
            labels = check_logits(out, num_classes=self.num_classes, name="the base classifier").argmax(1)
        else:
            raise ContractError(f"base classifier must return logits (N, K) or labels (N,), got shape "
                                f"{tuple(out.shape)}")
        if labels.shape[0] != batch.shape[0]:
            raise ContractError(f"base classifier returned {labels.shape[0]} outputs for {batch.shape[0]} inputs")
        return labels

    def _generators(self, count: int, seeds: Sequence[int] | None, generator: torch.Generator | None):
        if seeds is not None:
            if len(seeds) != count:
                raise ValueError(f"need one seed per image: {count} images, {len(seeds)} seeds")
            return [make_generator(int(s), self.device) for s in seeds]
        if generator is not None:
            draws = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device).tolist()
        else:
            draws = [None] * count
        return [make_generator(s, self.device) for s in draws]

    def _prepare(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int,
        generators: Sequence[torch.Generator] | None,
        seeds: Sequence[int] | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Checked (B, C, H, W) images on the device in the sampler's memory format, and one
        noise generator per image (``generators``, else ``seeds``, else drawn from ``generator``)."""
        x = check_images(x, "x", in_shape=self.in_shape)
        check_int("the number of noise samples", num, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        count = x.shape[0]
        gens = list(generators) if generators is not None else self._generators(count, seeds, generator)
        if len(gens) != count:
            raise ValueError(f"need one generator per image: {count} images, {len(gens)} generators")
        return x.to(self.device, torch.float32).contiguous(memory_format=self._memory_format()), gens

    def _noise_sum(
        self,
        x: torch.Tensor,
        gens: Sequence[torch.Generator],
        num: int,
        batch_size: int,
        score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The one sampling loop: for each image, ``num`` noisy copies x_i + d (d from the
        image's generator in blocks of min(NOISE_BLOCK, batch_size) draws, so a stream does
        not depend on the batching), packed into forward batches of up to ``batch_size``
        copies of possibly several images, run by ``workers`` threads.

        Without ``score``: class counts of the base classifier's labels, int64 (B, K). With
        ``score`` (batch -> float (n, K) per-copy weights): the sums of the weights, float64
        (B, K). On the device.
        """
        count, k = x.shape[0], self.num_classes
        mf = self._memory_format()
        block = min(NOISE_BLOCK, batch_size)
        self._timing_rows = batch_size  # later calls (CERTIFY's estimation after its n0) fill whole batches
        # blocks (image, size) in order; each image's blocks are drawn from its own generator
        full, tail = divmod(num, block)
        sizes = [block] * full + ([tail] if tail else [])
        if score is None:
            totals = torch.zeros(count * k, dtype=torch.int64, device=self.device)
        else:
            totals = torch.zeros(count, k, dtype=torch.float64, device=self.device)

        def plans():
            plan, filled = [], 0
            for img in range(count):
                for size in sizes:
                    if filled + size > batch_size:
                        yield plan
                        plan, filled = [], 0
                    plan.append((img, size))
                    filled += size
            if plan:
                yield plan

        def fill(buf: torch.Tensor, plan: list[tuple[int, int]]) -> torch.Tensor:
            # noise is always drawn here, in order, so each image's stream is the same
            # however the forward passes are scheduled
            offset = 0
            for img, size in plan:
                seg = buf[offset:offset + size]
                self.noise.sample_(seg, gens[img])
                seg.add_(x[img])
                offset += size
            return buf[:offset]

        def forward(noisy: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return self._classify(noisy) if score is None else score(noisy)

        def owners(plan: list[tuple[int, int]]) -> torch.Tensor:
            return torch.repeat_interleave(torch.tensor([p[0] for p in plan], device=self.device),
                                           torch.tensor([p[1] for p in plan], device=self.device))

        def accumulate(out: torch.Tensor, plan: list[tuple[int, int]]) -> None:
            if score is not None:
                totals.index_add_(0, owners(plan), out.to(torch.float64))
            elif plan[0][0] == plan[-1][0]:
                img = plan[0][0]
                totals[img * k:(img + 1) * k] += torch.bincount(out, minlength=k)[:k]
            else:
                totals.index_add_(0, owners(plan) * k + out, torch.ones_like(out))

        workers = self.workers
        bufs = [torch.empty((batch_size, *x.shape[1:]), device=self.device, dtype=torch.float32, memory_format=mf)
                for _ in range(workers + 1 if workers > 1 else 1)]
        with torch.inference_mode():
            if workers == 1:
                for plan in plans():
                    accumulate(forward(fill(bufs[0], plan)), plan)
            else:
                # a pipeline: the main thread draws the noise of batch i + 1 while up to
                # `workers` threads run forward passes (torch releases the GIL in its kernels)
                from collections import deque
                from concurrent.futures import ThreadPoolExecutor

                in_flight: deque = deque()
                with ThreadPoolExecutor(workers, thread_name_prefix="smoothguard-forward") as pool:
                    for i, plan in enumerate(plans()):
                        while len(in_flight) >= workers:
                            fut, done_plan = in_flight.popleft()
                            accumulate(fut.result(), done_plan)
                        noisy = fill(bufs[i % len(bufs)], plan)
                        if self._forward is None:  # trace once, before forwards run concurrently
                            accumulate(forward(noisy), plan)
                            continue
                        in_flight.append((pool.submit(forward, noisy), plan))
                    while in_flight:
                        fut, done_plan = in_flight.popleft()
                        accumulate(fut.result(), done_plan)
        return totals.view(count, k)

    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int = 400,
        *,
        generators: Sequence[torch.Generator] | None = None,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Class counts of f(x_i + d) over ``num`` noise draws per image: int64 (B, K).

        ``x`` is one image (C, H, W) or a batch (B, C, H, W). Noise comes from
        ``generators`` (one per image, advanced in place), else from ``seeds`` (one per
        image), else from per-image seeds drawn from ``generator`` (fresh entropy when
        None). Forward batches hold up to ``batch_size`` noisy images, possibly of
        several input images.
        """
        x, gens = self._prepare(x, num, batch_size, generators, seeds, generator)
        counts = self._noise_sum(x, gens, num, batch_size)
        counts = counts.cpu()
        if int(counts.sum()) != x.shape[0] * num:
            raise ValueError("base classifier returned labels outside [0, num_classes)")
        return counts

    # ------------------------------------------------------------------ PREDICT
    def predict_batch(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int = 400,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> PredictResult:
        """PREDICT for each image of a batch: the probability that a returned class is not
        g(x_i) is at most alpha for each image; abstains (-1) when undecided."""
        check_alpha(alpha)
        n = check_int("n", n, minimum=1)
        counts = self.sample_counts(x, n, batch_size, seeds=seeds, generator=generator)
        top2 = counts.topk(2, dim=1)
        preds, pvals = [], []
        for (n_a, n_b), c_a in zip(top2.values.tolist(), top2.indices[:, 0].tolist()):
            p = binom_pvalue(n_a, n_b)
            pvals.append(p)
            preds.append(c_a if p <= alpha else ABSTAIN)
        return PredictResult(torch.tensor(preds, dtype=torch.int64), torch.tensor(pvals, dtype=torch.float64), counts)

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int = 400,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> int:
        """Cohen's PREDICT: the class returned is g(x) with probability >= 1 - alpha
        (otherwise ABSTAIN = -1), from a two-sided binomial test on the top two counts."""
        res = self.predict_batch(_one_image(x, "predict"), n, alpha, batch_size,
                                 seeds=None if seed is None else [seed], generator=generator)
        return int(res.prediction[0])

    # ------------------------------------------------------------------ CERTIFY
    def certify_batch(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int = 400,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> CertifyResult:
        """CERTIFY for each image of a batch: for each image, with probability >= 1 - alpha
        a non-abstaining answer is g(x_i) and g is constant on the ball of the radius in the
        noise's norm (``result.norm``: l2 for Gaussian noise, l1 for uniform and Laplace)."""
        check_alpha(alpha)
        n0, n = check_int("n0", n0, minimum=1), check_int("n", n, minimum=1)
        x = check_images(x, "x", in_shape=self.in_shape)
        gens = self._generators(x.shape[0], seeds, generator)
        # selection and estimation use separate, fresh noise from the same per-image stream
        counts0 = self.sample_counts(x, n0, batch_size, generators=gens)
        c_a = counts0.argmax(1)
        counts = self.sample_counts(x, n, batch_size, generators=gens)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1)
        p_lower = torch.as_tensor(np.atleast_1d(lower_confidence_bound(n_a.numpy(), n, alpha)), dtype=torch.float64)
        certified = p_lower >= 0.5
        radius = torch.where(certified, torch.as_tensor(np.atleast_1d(self.noise.radius(p_lower.numpy())),
                                                        dtype=torch.float64), torch.zeros_like(p_lower))
        prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
        return CertifyResult(prediction, radius, p_lower, counts0, counts, self.noise.norm)

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int = 400,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Cohen's CERTIFY: with probability >= 1 - alpha, a non-abstaining class is g(x)
        and g(x + delta) = g(x) for all ||delta|| < radius in the noise's norm (l_2 for the
        default Gaussian noise); returns (ABSTAIN, 0.0) when the lower bound on p_A is below 1/2."""
        res = self.certify_batch(_one_image(x, "certify"), n0, n, alpha, batch_size,
                                 seeds=None if seed is None else [seed], generator=generator)
        return int(res.prediction[0]), float(res.radius[0])

    # ------------------------------------------------------------------ smoothed inference
    def vote(
        self,
        x: torch.Tensor,
        m: int,
        method: str = "hard",
        batch_size: int = 400,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Smoothed inference (Nemcovsky et al.): the class of each image chosen from ``m``
        noisy forward passes by ``method`` (``hard`` majority of argmaxes, ``soft`` mean
        probabilities, ``soft_logits`` mean logits as in the paper's code, ``weighted``
        2^-rank votes); int64 (B,), ties to the lowest class. No guarantee: an empirical
        defense. Noise as in :meth:`sample_counts`; see :mod:`smoothguard.smoothing.inference`."""
        from smoothguard.smoothing.inference import smoothed_scores

        return smoothed_scores(self, x, m, method, batch_size, seeds=seeds, generator=generator).argmax(1)


def _time_forwards(fns: Sequence[Callable[[torch.Tensor], torch.Tensor]], batch: torch.Tensor,
                   warmup: int = 2, reps: int = 3) -> list[float]:
    """The fastest of ``reps`` interleaved timings of each forward on ``batch`` (seconds),
    after ``warmup`` calls each (TorchScript optimizes a graph on its first calls)."""
    import time

    best = [math.inf] * len(fns)
    for _ in range(warmup):
        for fn in fns:
            fn(batch)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            if batch.device.type == "cuda":
                torch.cuda.synchronize(batch.device)
            t0 = time.perf_counter()
            fn(batch)
            if batch.device.type == "cuda":
                torch.cuda.synchronize(batch.device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def image_seed(seed: int, index: int) -> int:
    """The per-image noise seed used by the CLI: depends only on (seed, dataset index)."""
    return derive_seed(seed, "image", int(index))


def _one_image(x: torch.Tensor, verb: str) -> torch.Tensor:
    """``x`` as a batch of exactly one image: (C, H, W) or (1, C, H, W). A batch of several
    is refused (returning the first image's answer would silently drop the others)."""
    x = check_images(x, "x")
    if x.shape[0] != 1:
        raise ContractError(f"{verb}() takes one image, (C, H, W) or (1, C, H, W); got {x.shape[0]} images "
                            f"(shape {tuple(x.shape)}). Use {verb}_batch() for a batch: one result per image")
    return x
