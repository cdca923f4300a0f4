"""The sampler: class counts of a base classifier under noise, for one image or many.

This is Cohen et al.'s SAMPLEUNDERNOISE (Cohen, Rosenfeld and Kolter, ICML 2019), the one
loop every smoothing method of smoothguard runs (CERTIFY, PREDICT, their adaptive and
anytime-valid forms, smoothed inference).

It draws the noise of each image from that image's own generator in fixed blocks of
``NOISE_BLOCK`` samples and packs blocks of several images into each forward batch, so
(i) small sample counts still fill the batch, (ii) with a seed per image the counts of an
image depend only on its seed (not on the other images of the call), and (iii) there is no
Python loop over samples: noise is generated in place in the batch buffer, counts are
accumulated with one ``index_add_`` per batch on the device, and the host reads them once
per call. How the model is run (layout, exact rewrites, worker threads, opt-in jit) is a
:class:`smoothguard.runtime.SpeedConfig`, chosen by rules in :mod:`smoothguard.runtime`.

Time: with ``seconds`` (a float64 array, one entry per image), each image is charged its
share of every forward batch it took part in: the wall time from the end of one batch to
the end of the next (noise drawing, forward pass, counting) split among the batch's images
by their numbers of noisy copies. The charges of a call add up to its loop's wall time.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from smoothguard import runtime
from smoothguard.contract import ContractError, check_images, check_int, check_logits, forward_errors
from smoothguard.noise import Noise
from smoothguard.utils import make_generator

NOISE_BLOCK = 100  # noise samples per block of one image (see the module docstring)

clock = time.perf_counter  # the sampler's clock (a test may replace it with a counter)


class Sampler:
    """Draws ``noise`` around images and counts the base classifier's answers.

    Args:
        base_classifier: ``nn.Module`` or callable on [0, 1] images (N, C, H, W) returning
            logits (N, K) or integer labels (N,) (a query-only classifier).
        num_classes: K.
        noise: a :class:`smoothguard.noise.Noise` (what is added, in pixel space, unclipped).
        speed: how the module runs (:mod:`smoothguard.runtime`); its memory format is
            applied to the module *in place* (layout only, never values).
        precision: ``fp32`` or ``bf16`` (autocast).
        device: where the noise is drawn (default: the module's; CPU for a callable).
        in_shape: (C, H, W) the inputs must have (checked on every call), or None.
    """

    def __init__(self, base_classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                 noise: Noise, speed: runtime.SpeedConfig, *, precision: str = "fp32",
                 device: torch.device | str | None = None, in_shape: Sequence[int] | None = None) -> None:
        self.base_classifier, self.num_classes, self.noise = base_classifier, num_classes, noise
        self.speed, self.precision = speed, precision
        is_module = isinstance(base_classifier, nn.Module)
        self.device = torch.device(device) if device is not None else runtime.device_of(base_classifier)
        self.in_shape = None if in_shape is None else tuple(in_shape)
        # what runs: the base classifier, or its exact rewrite (shared weights)
        self.module = runtime.prepare(base_classifier, speed) if is_module else base_classifier
        self.forward: Callable[[torch.Tensor], torch.Tensor] | None = None if speed.jit else self.module

    # ------------------------------------------------------------------ one forward pass
    def autocast(self):
        return (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                if self.precision == "bf16" else contextlib.nullcontext())

    def outputs(self, batch: torch.Tensor) -> torch.Tensor:
        """The base classifier's outputs (logits or labels) under this sampler's precision
        and, with jit, its frozen copy (traced on the first batch)."""
        if self.forward is None:
            self.forward = runtime.trace(self.module, batch, self.autocast)
        with self.autocast():
            return self.forward(batch)

    def labels(self, batch: torch.Tensor) -> torch.Tensor:
        """The base classifier's class for each noisy image, int64 (N,), checked."""
        with forward_errors(batch.shape[1:], "the base classifier"):
            out = self.outputs(batch)
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

    # ------------------------------------------------------------------ noise streams
    def generators(self, count: int, seeds: Sequence[int] | None = None,
                   generator: torch.Generator | None = None) -> list[torch.Generator]:
        """One noise generator per image: from ``seeds`` (one per image), else seeded by draws
        from ``generator``, else from fresh entropy."""
        if seeds is not None:
            if len(seeds) != count:
                raise ValueError(f"need one seed per image: {count} images, {len(seeds)} seeds")
            return [make_generator(int(s), self.device) for s in seeds]
        if generator is not None:
            draws = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device).tolist()
        else:
            draws = [None] * count
        return [make_generator(s, self.device) for s in draws]

    def prepare(self, x: torch.Tensor, num: int, batch_size: int, generators: Sequence[torch.Generator] | None,
                seeds: Sequence[int] | None, generator: torch.Generator | None):
        """Checked (B, C, H, W) images on the device in the sampler's layout, and one
        generator per image (``generators``, else ``seeds``, else drawn from ``generator``)."""
        x = check_images(x, "x", in_shape=self.in_shape)
        check_int("the number of noise samples", num, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        count = x.shape[0]
        gens = list(generators) if generators is not None else self.generators(count, seeds, generator)
        if len(gens) != count:
            raise ValueError(f"need one generator per image: {count} images, {len(gens)} generators")
        return x.to(self.device, torch.float32).contiguous(memory_format=self.speed.torch_memory_format()), gens

    # ------------------------------------------------------------------ the loop
    def counts(self, x: torch.Tensor, num: int, batch_size: int = 400, *,
               generators: Sequence[torch.Generator] | None = None, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None, seconds: np.ndarray | None = None) -> torch.Tensor:
        """Class counts of f(x_i + d) over ``num`` noise draws per image: int64 (B, K), on the CPU.

        ``x`` is one image (C, H, W) or a batch (B, C, H, W); noise as in :meth:`prepare`.
        Forward batches hold up to ``batch_size`` noisy images, possibly of several input
        images. ``seconds`` (float64 (B,)) gets each image's share of the time added."""
        x, gens = self.prepare(x, num, batch_size, generators, seeds, generator)
        counts = self.run(x, gens, num, batch_size, seconds=seconds).cpu()
        if int(counts.sum()) != x.shape[0] * num:
            raise ValueError("base classifier returned labels outside [0, num_classes)")
        return counts

    def run(self, x: torch.Tensor, gens: Sequence[torch.Generator], num: int, batch_size: int,
            score: Callable[[torch.Tensor], torch.Tensor] | None = None,
            seconds: np.ndarray | None = None) -> torch.Tensor:
        """For each image of prepared ``x``, ``num`` noisy copies x_i + d (d from the image's
        generator in blocks of min(NOISE_BLOCK, batch_size) draws, so a stream does not depend
        on the batching), packed into forward batches of up to ``batch_size`` copies.

        Without ``score``: class counts, int64 (B, K). With ``score`` (batch -> float (n, K)
        per-copy weights): their sums, float64 (B, K). On the device."""
        count, k = x.shape[0], self.num_classes
        block = min(NOISE_BLOCK, batch_size)
        full, tail = divmod(num, block)
        sizes = [block] * full + ([tail] if tail else [])  # each image's blocks, from its own generator
        if score is None:
            totals = torch.zeros(count * k, dtype=torch.int64, device=self.device)
        else:
            totals = torch.zeros(count, k, dtype=torch.float64, device=self.device)
        if seconds is not None and len(seconds) != count:
            raise ValueError(f"seconds needs one entry per image: {count} images, {len(seconds)} entries")

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

        def fill(buf: torch.Tensor, plan) -> torch.Tensor:
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
                return self.labels(noisy) if score is None else score(noisy)

        def owners(plan) -> torch.Tensor:
            return torch.repeat_interleave(torch.tensor([p[0] for p in plan], device=self.device),
                                           torch.tensor([p[1] for p in plan], device=self.device))

        last = [clock()]

        def accumulate(out: torch.Tensor, plan) -> None:
            if score is not None:
                totals.index_add_(0, owners(plan), out.to(torch.float64))
            elif plan[0][0] == plan[-1][0]:
                img = plan[0][0]
                totals[img * k:(img + 1) * k] += torch.bincount(out, minlength=k)[:k]
            else:
                totals.index_add_(0, owners(plan) * k + out, torch.ones_like(out))
            if seconds is not None:  # the batch's time since the previous one ended, by share of copies
                now = clock()
                rows = sum(size for _, size in plan)
                for img, size in plan:
                    seconds[img] += (now - last[0]) * size / rows
                last[0] = now

        workers = self.speed.workers
        mf = self.speed.torch_memory_format()
        bufs = [torch.empty((batch_size, *x.shape[1:]), device=self.device, dtype=torch.float32, memory_format=mf)
                for _ in range(workers + 1 if workers > 1 else 1)]
        with torch.inference_mode(), runtime.thread_split(self.speed):
            if workers == 1:
                for plan in plans():
                    accumulate(forward(fill(bufs[0], plan)), plan)
            else:
                # a pipeline: the main thread draws the noise of batch i + 1 while up to
                # `workers` threads run forward passes (torch releases the GIL in its kernels)
                in_flight: deque = deque()
                with ThreadPoolExecutor(workers, thread_name_prefix="smoothguard-forward") as pool:
                    for i, plan in enumerate(plans()):
                        while len(in_flight) >= workers:
                            fut, done_plan = in_flight.popleft()
                            accumulate(fut.result(), done_plan)
                        noisy = fill(bufs[i % len(bufs)], plan)
                        if self.forward is None:  # trace once, before forwards run concurrently
                            accumulate(forward(noisy), plan)
                            continue
                        in_flight.append((pool.submit(forward, noisy), plan))
                    while in_flight:
                        fut, done_plan = in_flight.popleft()
                        accumulate(fut.result(), done_plan)
        return totals.view(count, k)
