"""Speed options, in one place: the fastest configuration that leaves results unchanged,
chosen by rules.

The defaults are chosen by :func:`fastest_exact` from what can be read off the model and
the machine (its layer types, its device, torch's thread count), never from timing a
forward pass: a choice that depended on the load of the machine would make two runs of
the same command differ. Whatever is chosen is a :class:`SpeedConfig`, which result
sidecars record (:meth:`SpeedConfig.settings`) and ``SmoothedClassifier.speed`` shows.

"Exact" below means: the default never changes a count relative to the reference
configuration of the sampler (the one every pinned result was made with: channels_last on
the CPU, rewrites on, eager fp32). Options that change the floating-point arithmetic
relative to it are opt-in.

| option | default rule | changes results? |
|---|---|---|
| ``memory_format`` | ``channels_last`` for a module with a 2-D convolution (a 4-D weight) on the CPU (oneDNN's convolutions run faster on it), else ``contiguous`` | it is the reference on the CPU; ``contiguous`` sums the convolutions in another order (logits differ by ~1e-6 on LeNet, as with another batch size), so votes can move |
| ``rewrite`` | on for every module: :func:`~smoothguard.models.rewrite.pool_before_relu`, and for inference :func:`~smoothguard.models.rewrite.strided_max_pools` (for attacks, :func:`for_gradients`: the grad-aware pools) | no, by construction (see :mod:`smoothguard.models.rewrite`) |
| ``conv_grad`` | attacks only (:func:`for_gradients`): on for a model on the CPU: :func:`~smoothguard.models.rewrite.input_grad_convs`, the input gradient of convolutions with <= 3 input channels as GEMM + shifted sums (LeNet's forward+backward 0.73x the time on the AVX-512 machine, ~0.83x on the AVX2 one, one thread) | the logits no; the input gradient is the same sum in another order (~1e-7 relative, as with another memory format), which can move an l2 attack's norm in its last float32 digit; ``conv_grad=False`` (CLI ``--no-conv-grad``) gives the gradients of oneDNN's own backward |
| ``workers`` | 2 forward threads on a CPU with >= 2 torch threads (each with threads // 2 intra-op threads while the sampler runs; the main thread draws the next noise meanwhile), else 1 | no: the same batches of the same noise; counts equal (tested; oneDNN's convolutions gave equal logits at 1 and 2 threads) |
| ``jit`` | off | yes: TorchScript's frozen graph folds and fuses operations (logits differ by 2.4e-6 on LeNet): opt-in |
| ``precision`` bf16 | not a speed option here: the caller's choice (``SmoothedClassifier(precision=...)``) | yes |
| allocator | not chosen by the library: the ``smoothguard`` command keeps freed memory (:func:`smoothguard.utils.retain_freed_memory`), recorded as ``allocator`` | no |

The CPU's vector extensions are recorded too (``cpu_flags``), so that a sidecar names the
machine class its speed came from.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch import nn

from smoothguard.contract import ContractError, check_choice, check_int

MEMORY_FORMATS = ("channels_last", "contiguous")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class SpeedConfig:
    """How a model is run: chosen by :func:`fastest_exact` (or given), recorded in sidecars."""

    memory_format: str = "contiguous"  # channels_last | contiguous (of the weights and the noisy batch)
    rewrite: bool = False  # the exact ReLU/MaxPool rewrites of smoothguard.models.rewrite
    workers: int = 1  # threads running forward passes concurrently
    threads: int = 1  # torch intra-op threads per worker while the sampler runs
    jit: bool = False  # TorchScript freeze (not exact; opt-in)
    rule: str = "given"  # why: "fastest-exact" (the rules of this module), "plain" or "given"
    conv_grad: bool = False  # attacks: first convolutions' input gradient by GEMM + shifted sums (float rounding)

    def __post_init__(self) -> None:
        check_choice("memory_format", self.memory_format, MEMORY_FORMATS)
        check_int("workers", self.workers, minimum=1)
        check_int("threads", self.threads, minimum=1)
        for name in ("rewrite", "jit", "conv_grad"):
            if not isinstance(getattr(self, name), bool):
                raise ContractError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def torch_memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format

    def settings(self) -> dict[str, Any]:
        """What a result sidecar records: the choices and the machine."""
        from smoothguard.utils import retaining_freed_memory

        return {**asdict(self), "cpu_flags": cpu_flags(),
                "allocator": "retain-freed" if retaining_freed_memory() else "default",
                "torch": torch.__version__}


@functools.lru_cache(maxsize=1)
def _read_cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as fh:
            words = set(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        return ()
    return tuple(f for f in _CPU_FLAGS if f in words)


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that decide oneDNN's kernels (from /proc/cpuinfo;
    empty where it cannot be read)."""
    return list(_read_cpu_flags())


def device_of(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        if p is None:
            p = next(model.buffers(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def fastest_exact(model: Any, device: torch.device | str | None = None,
                  threads: int | None = None) -> SpeedConfig:
    """The fastest exact configuration for ``model`` by the rules of the module docstring:
    from its layer types (a 2-D convolution, i.e. a 4-D weight?), its device and ``threads`` (default: torch's
    current intra-op thread count). The same model on the same machine always gets the same
    answer. A callable that is not an ``nn.Module`` (a query-only classifier) runs as given."""
    total = check_int("threads", threads if threads is not None else torch.get_num_threads(), minimum=1)
    if not isinstance(model, nn.Module):
        return SpeedConfig(threads=total, rule="fastest-exact")
    dev = torch.device(device) if device is not None else device_of(model)
    on_cpu = dev.type == "cpu"
    # a 2-D convolution's weight is the one 4-D parameter (nn.Conv2d, or a custom layer calling F.conv2d)
    has_conv = any(p.dim() == 4 for p in model.parameters())
    workers = 2 if on_cpu and total >= 2 else 1
    return SpeedConfig(memory_format="channels_last" if on_cpu and has_conv else "contiguous", rewrite=True,
                       workers=workers, threads=max(1, total // workers), jit=False, rule="fastest-exact")


def plain(threads: int | None = None) -> SpeedConfig:
    """No speed option at all: the model as given, one worker with all threads."""
    return SpeedConfig(threads=check_int("threads", threads or torch.get_num_threads(), minimum=1), rule="plain")


def resolve(model: Any, speed: str | SpeedConfig | None = "auto", device: torch.device | str | None = None,
            **overrides: Any) -> SpeedConfig:
    """``speed`` as a :class:`SpeedConfig`: ``"auto"`` (or None) is :func:`fastest_exact`,
    ``"plain"`` is :func:`plain`, a config is taken as is; then each override that is not
    None replaces its field (``memory_format="auto"`` keeps the rule's). Overrides that
    differ from the rule's choice mark the config's ``rule`` as ``"given"``."""
    if speed is None or speed == "auto":
        config = fastest_exact(model, device)
    elif speed == "plain":
        config = plain()
    elif isinstance(speed, SpeedConfig):
        config = speed
    else:
        raise ContractError(f"speed must be 'auto', 'plain' or a SpeedConfig, got {speed!r}")
    given = {k: v for k, v in overrides.items() if v is not None and not (k == "memory_format" and v == "auto")}
    if "workers" in given and "threads" not in given:  # split the same threads among the workers
        total = config.threads * config.workers
        given["threads"] = max(1, total // check_int("workers", given["workers"], minimum=1))
    changed = {k: v for k, v in given.items() if getattr(config, k) != v}
    if not isinstance(model, nn.Module):  # nothing to rewrite, lay out or trace in a plain callable
        changed = {k: v for k, v in changed.items() if k in ("workers", "threads")}
    return replace(config, **changed, rule="given") if changed else config


def prepare(model: nn.Module, config: SpeedConfig, inference: bool = True) -> nn.Module:
    """``model`` laid out and rewritten as ``config`` says; returns the module to run.

    The memory format is changed *in place* (``model.to(memory_format=...)``: the layout of
    the weights, never their values). The rewrites build a new module tree sharing every
    weight; the rewrite that is exact for values only (:func:`strided_max_pools`) is applied
    only for ``inference`` (no gradients taken). ``jit`` is applied later, on the first batch
    (:func:`trace`)."""
    from smoothguard.models.rewrite import pool_before_relu, strided_max_pools

    model.eval() if inference else None
    if config.memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    if not config.rewrite:
        return model
    module = pool_before_relu(model)[0]
    return strided_max_pools(module)[0] if inference else module


def for_gradients(model: nn.Module, channels_last: bool | None = None,
                  conv_grad: bool | None = None) -> tuple[nn.Module, SpeedConfig]:
    """What attacks and evaluations run (they take gradients): the layout of
    :func:`fastest_exact` (``channels_last`` overrides it), the gradient-exact rewrite
    (:func:`~smoothguard.models.rewrite.pool_before_relu`), and max pools that take the
    strided path only on forward passes without gradients
    (:func:`~smoothguard.models.rewrite.grad_aware_max_pools`: MaxPool2d's values and
    gradients always; Square's queries ran 1.15x faster). Attacks take gradients with
    respect to the input only, so the model's parameters are frozen *in place*
    (``requires_grad_(False)``, like the layout: the module shares them): no weight gradient
    is computed or recorded (forward+backward ~0.95x the time, LeNet, AVX2 machine; the
    same kernels, so the same bits). ``conv_grad`` (default: on for a model on the CPU)
    wraps the convolutions with <= 3 input channels in
    :class:`~smoothguard.models.rewrite.InputGradConv2d`: their values, and their input
    gradient as the same sum in another order (float rounding, ~1e-7 relative; recorded as
    ``conv_grad`` in the config, True only where a convolution was wrapped). Returns
    (module, config)."""
    if conv_grad is not None and not isinstance(conv_grad, bool):
        raise ContractError(f"conv_grad must be True, False or None (the rule), got {conv_grad!r}")
    model.requires_grad_(False)
    config = fastest_exact(model)
    config = replace(config, workers=1, threads=config.threads * config.workers)
    if channels_last is not None:
        config = resolve(model, config, memory_format="channels_last" if channels_last else "contiguous")
    if conv_grad is None:  # the rule: the GEMM path is written for the CPU (InputGradConv2d runs it there only)
        conv_grad = device_of(model).type == "cpu"
    module = prepare(model, config, inference=False)
    if config.rewrite:  # decision-only forward passes (Square's queries, predictions) take the strided pools
        from smoothguard.models.rewrite import grad_aware_max_pools

        module = grad_aware_max_pools(module)[0]
    if conv_grad:
        from smoothguard.models.rewrite import input_grad_convs

        module, wrapped = input_grad_convs(module)
        config = replace(config, conv_grad=wrapped > 0)
    return module, config


@contextlib.contextmanager
def thread_split(config: SpeedConfig) -> Iterator[None]:
    """torch's intra-op threads set to ``config.threads`` while the sampler runs with more
    than one worker (the workers share the cores instead of each op using all of them);
    restored afterwards. Worker threads started inside take this count."""
    before = torch.get_num_threads()
    if config.workers > 1 and config.threads != before:
        torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def trace(model: nn.Module, batch: torch.Tensor, autocast: Callable[[], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``jit``: a TorchScript-frozen copy of ``model`` checked against it on ``batch`` (and a
    smaller one); the eager model, with a warning, when tracing fails, warns that the trace
    may depend on the data, or the outputs differ beyond float rounding (1e-3). Never timed:
    asking for jit gets the frozen graph whenever it is correct."""
    try:
        with autocast(), warnings.catch_warnings(record=True) as caught:
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
        return frozen
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use eager
        warnings.warn(f"jit: cannot trace the model ({exc}); using the eager model", RuntimeWarning, stacklevel=3)
        return model
