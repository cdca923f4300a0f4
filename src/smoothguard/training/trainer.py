"""The one training loop of smoothguard.

Reproducible and resumable by construction: the shuffling order and the noise of epoch
e come from generators seeded with (seed, e), and every epoch ends with an atomic
checkpoint holding the model, optimizer, scheduler and history. Resuming from epoch e
therefore continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import write_text_atomic
from smoothguard.data import Dataset
from smoothguard.distributed import World, barrier
from smoothguard.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from smoothguard.models.noise import noise_generator
from smoothguard.noise import get_noise
from smoothguard.training.objectives import Objective, StepContext
from smoothguard.utils import derive_seed, make_generator, model_device

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
LOG_NAME = "log.tsv"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


@dataclass
class TrainConfig:
    """Optimization settings. Defaults suit LeNet on (Fashion-)MNIST."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (momentum) or adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # constant, step (x gamma every lr_step epochs), cosine
    lr_step: int = 10
    gamma: float = 0.1
    seed: int = 0
    eval_noise_sd: float | None = None  # None: the objective's noise_sd, or 0.25 when it has none
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.lr_step < 1:
            raise ValueError(f"lr_step must be >= 1 epoch, got {self.lr_step}")
        if self.eval_noise_sd is not None and self.eval_noise_sd < 0:
            raise ValueError(f"eval_noise_sd must be >= 0, got {self.eval_noise_sd}")


class TrainCallback(Protocol):
    """Progress hooks (the CLI plugs a progress bar in here; the core prints nothing)."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def on_step(self, epoch: int, step: int, loss: float, acc: float) -> None: ...
    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None: ...


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: Dataset,
    noise_sd: float = 0.0,
    batch_size: int = 1000,
    seed: int = 0,
    noise: str = "gaussian",
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the base model on clean (noise_sd=0) or noisy images
    (``noise``: the distribution, see :mod:`smoothguard.noise`)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    gen = make_generator(seed, device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device)
        y = data.labels[start:start + batch_size].to(device)
        if noise_sd > 0:
            x = x + get_noise(noise, noise_sd).draw(x.shape, x, gen)
        with noise_generator(model, gen):  # noise-injection layers (if any) draw from gen too
            logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(data), 1)
    return total_loss / n, correct / n


@torch.no_grad()
def evaluate_denoiser(
    model: nn.Module, data: Dataset, noise_sd: float, batch_size: int = 1000, seed: int = 0,
) -> tuple[float, float]:
    """(MSE, PSNR in dB) of a denoiser on noisy test images: mean over pixels of
    (D(x + d) - x)^2, d ~ N(0, noise_sd^2 I), and 10 log10(1 / MSE) for [0, 1] pixels (the
    noisy input itself has MSE noise_sd^2, e.g. 12.0 dB at noise_sd 0.25)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    gen = make_generator(seed, device)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device)
        out = model(x + get_noise("gaussian", noise_sd).draw(x.shape, x, gen))
        total += float(((out - x) ** 2).sum())
        count += x.numel()
    model.train(was_training)
    mse = total / max(count, 1)
    return mse, (10 * math.log10(1 / mse) if mse > 0 else float("inf"))


class ObjectiveStep(nn.Module):
    """One training step's loss as the forward of a module: ``objective(model, x, y, ctx)``.

    Under torchrun the Trainer wraps this module, not the bare model, in
    DistributedDataParallel: the objective may call the model many times (attacks, clean
    and adversarial passes, noise draws), but DDP sees one forward per backward. Only the
    model's parameters belong to this module (the objective's frozen networks, if any,
    are not registered)."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self._objective = [objective]  # a list keeps any modules inside it unregistered

    def forward(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        return self._objective[0](self.model, x, y, ctx)


class Trainer:
    """Trains ``model`` with ``objective``; writes ``log.tsv``, ``checkpoint.pt`` (every
    epoch, resumable) and ``model.pt`` (final weights and metadata) into ``out_dir``."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: TrainConfig,
        meta: dict[str, Any] | None = None,
        callback: TrainCallback | None = None,
        world: World | None = None,
    ) -> None:
        """``world``: the torchrun process group (see :mod:`smoothguard.distributed`). With
        K > 1 ranks every minibatch of ``batch_size`` is split across the ranks and the
        training step runs under :class:`torch.nn.parallel.DistributedDataParallel`, which
        averages the gradients across the ranks during the backward pass, so the ranks stay
        identical and the update is the single-process one up to float rounding (each
        rank's loss is weighted by its share of the minibatch, so uneven last minibatches
        are exact too; batch-norm statistics are rank 0's, as DDP broadcasts them). DDP
        wraps the whole objective (:class:`ObjectiveStep`), not just the model: objectives
        run several forward passes per step (attacks, TRADES' clean and adversarial passes,
        m noise draws), and DDP allows exactly one forward of the wrapped module per
        backward; the attacks inside take gradients w.r.t. the input only, which DDP does
        not see. Rank 0 evaluates, writes the log and the checkpoints; every rank can resume
        from them."""
        self.model = model
        self.world = world or World()
        self.objective = objective
        self.config = config
        # a model from get_model / get_denoiser carries the metadata that rebuilds it
        # (``model.build_meta``); an explicit ``meta`` adds to it and wins on conflicts
        self.meta = {**dict(getattr(model, "build_meta", None) or {}), **dict(meta or {})}
        self.callback = callback
        self.optimizer = _make_optimizer(model, config)
        self.scheduler = _make_scheduler(self.optimizer, config)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.elapsed = 0.0

    # -- checkpoint/resume ---------------------------------------------------------------
    def _full_meta(self) -> dict[str, Any]:
        meta = dict(self.meta)
        meta["training"] = {**asdict(self.config), **self.objective.settings()}
        meta["objective"] = self.objective.name
        meta["noise_sd"] = self.objective.noise_sd
        if getattr(self.objective, "noise", "gaussian") != "gaussian":  # what certify must add by default
            meta["noise"] = self.objective.noise
        meta["seed"] = self.config.seed
        meta["world_size"] = self.world.size  # torchrun ranks that shared each minibatch
        if self.history:
            last = self.history[-1]
            meta["metrics"] = {k: v for k, v in last.items() if k != "epoch"}
            meta["epochs_trained"] = last["epoch"]
        meta["train_seconds"] = round(self.elapsed, 3)
        return meta

    def _check_meta_for_checkpoints(self) -> None:
        """Checkpoints must rebuild the model with no user code: refuse before training when
        the metadata for that is missing (a model not built by get_model/get_denoiser)."""
        from smoothguard.models.checkpoint import REQUIRED_META

        kind = self.meta.get("kind", "classifier")
        need = REQUIRED_META if kind == "classifier" else ("arch", "in_shape")
        missing = [k for k in need if k not in self.meta]
        if missing:
            raise CheckpointError(
                f"Trainer cannot write checkpoints for this {type(self.model).__name__}: its metadata lacks "
                f"{', '.join(missing)}. Models from get_model()/get_denoiser() carry it (model.build_meta); for "
                "another nn.Module pass Trainer(..., meta={...}) with arch, num_classes, in_shape, mean, std "
                "(README: 'Your own model'), or call fit(train, test) without out_dir to write no files")

    def _train_state(self) -> dict[str, Any]:
        return {
            "epoch": len(self.history),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history_json": json.dumps(self.history),
            "config_json": json.dumps({**asdict(self.config), **self.objective.settings()}, sort_keys=True),
            "elapsed": self.elapsed,
        }

    def resume_from(self, path: str | Path) -> None:
        """Load model, optimizer, scheduler and history from a checkpoint with train state.

        Refuses when the checkpoint was made with other training settings (other than
        ``epochs``, which may be raised to train longer).
        """
        payload = read_checkpoint(path)
        state = payload.get("train_state")
        if state is None:
            raise CheckpointError(f"{path} has no training state to resume from")
        saved = json.loads(state["config_json"])
        now = {**asdict(self.config), **self.objective.settings()}
        diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
                if k != "epochs" and saved.get(k) != now.get(k)}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise CheckpointError(f"cannot resume from {path}: settings differ ({detail})")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = json.loads(state["history_json"])
        self.start_epoch = int(state["epoch"])
        self.elapsed = float(state.get("elapsed", 0.0))

    # -- the loop --------------------------------------------------------------------------
    def _write_log(self, out_dir: Path) -> None:
        if not self.history:
            return
        keys = list(self.history[0].keys())
        for row in self.history[1:]:
            keys += [k for k in row if k not in keys]
        lines = ["\t".join(keys)]
        for row in self.history:
            lines.append("\t".join(_fmt(row.get(k, "")) for k in keys))
        write_text_atomic(out_dir / LOG_NAME, "\n".join(lines) + "\n", "training log")

    def fit(self, train: Dataset, test: Dataset | None = None, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs (from ``start_epoch`` when resumed)."""
        cfg = self.config
        out = Path(out_dir) if out_dir is not None else None
        if out is not None:
            self._check_meta_for_checkpoints()  # before epoch 1, not after it
            out.mkdir(parents=True, exist_ok=True)
        device = model_device(self.model)
        n = len(train)
        steps = math.ceil(n / cfg.batch_size)
        eval_sd = cfg.eval_noise_sd if cfg.eval_noise_sd is not None else (self.objective.noise_sd or 0.25)
        world = self.world
        step_fn: nn.Module = ObjectiveStep(self.model, self.objective)
        if world.distributed:  # DDP starts every rank from rank 0's weights and buffers
            from torch.nn.parallel import DistributedDataParallel

            step_fn = DistributedDataParallel(step_fn, device_ids=[device] if device.type == "cuda" else None)
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            self.model.train()
            order_gen = make_generator(derive_seed(cfg.seed, "order", epoch))
            order = torch.randperm(n, generator=order_gen)
            noise_gen = make_generator(derive_seed(cfg.seed, "noise", epoch, *(
                [world.rank] if world.distributed else [])), device)
            lr = self.optimizer.param_groups[0]["lr"]
            sums: dict[str, float] = {"loss": 0.0, "correct": 0.0, "count": 0.0, "acc_count": 0.0}
            extra: dict[str, float] = {}
            if self.callback:
                self.callback.on_epoch_start(epoch, steps)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                weight = 1.0
                if world.distributed:
                    mine = idx[world.rank::world.size]
                    # DDP averages over the ranks: weight each rank's mean loss by its share
                    # so the average is the whole minibatch's mean-loss gradient. A rank left
                    # without examples (a last minibatch smaller than the number of ranks)
                    # still joins the step, on one example with weight 0.
                    weight = len(mine) * world.size / len(idx)
                    idx = mine if len(mine) else idx[:1]
                x = train.images[idx].to(device, non_blocking=True)
                y = train.labels[idx].to(device, non_blocking=True)
                ctx = StepContext(epoch, cfg.epochs, step, steps, noise_gen)
                # an objective may replay each minibatch (free adversarial training: m optimizer
                # steps per minibatch); every other objective takes one step
                for _replay in range(getattr(self.objective, "replays", 1)):
                    with noise_generator(self.model, noise_gen):  # noise-injection layers: seeded too
                        out_step = step_fn(x, y, ctx)
                    self.optimizer.zero_grad(set_to_none=True)
                    (out_step.loss * weight if weight != 1.0 else out_step.loss).backward()
                    self.optimizer.step()
                    if weight == 0.0:  # the placeholder example is not counted
                        continue
                    bs = len(y)
                    loss_v = float(out_step.loss.detach())
                    sums["loss"] += loss_v * bs
                    sums["count"] += bs
                    acc_v = float("nan")
                    if out_step.logits is not None:
                        corr = float((out_step.logits.detach().argmax(1) == y).sum())
                        sums["correct"] += corr
                        sums["acc_count"] += bs
                        acc_v = corr / bs
                    for k, v in out_step.stats.items():
                        extra[k] = extra.get(k, 0.0) + float(v) * bs
                if weight != 0.0 and self.callback:
                    self.callback.on_step(epoch, step, loss_v, acc_v)
            self.scheduler.step()
            if world.distributed:
                sums, extra = _sum_over_ranks(sums, extra)
                _broadcast_module(self.model, buffers_only=True)  # batch-norm statistics: rank 0's
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": sums["loss"] / sums["count"],
            }
            if sums.get("acc_count", 0.0) > 0:  # objectives without logits (denoiser MSE) have no accuracy
                row["train_acc"] = sums["correct"] / sums["acc_count"]
            row.update({k: v / sums["count"] for k, v in extra.items()})
            eval_model = self.objective.eval_model(self.model)  # a denoiser is evaluated as f(D(x))
            if test is not None and len(test) and eval_model is not None and world.rank == 0:
                row["test_loss"], row["test_acc"] = evaluate_accuracy(eval_model, test, 0.0, cfg.eval_batch_size)
                if eval_sd > 0:
                    row["noise_sd"] = eval_sd
                    row["noisy_test_loss"], row["noisy_test_acc"] = evaluate_accuracy(
                        eval_model, test, eval_sd, cfg.eval_batch_size, seed=derive_seed(cfg.seed, "eval"),
                        noise=getattr(self.objective, "noise", "gaussian"))
            if test is not None and len(test) and self.meta.get("kind") == "denoiser" and world.rank == 0 \
                    and eval_sd > 0:
                row["test_mse"], row["test_psnr"] = evaluate_denoiser(
                    self.model, test, eval_sd, cfg.eval_batch_size, seed=derive_seed(cfg.seed, "eval"))
            seconds = time.perf_counter() - t0
            row["seconds"] = seconds
            if world.distributed:  # every rank keeps rank 0's row (its test metrics and time)
                row = _from_rank0(row)
            self.elapsed += row["seconds"]
            self.history.append(row)
            if out is not None and world.rank == 0:
                save_checkpoint(out / CHECKPOINT_NAME, self.model, self._full_meta(), self._train_state())
                self._write_log(out)
            if world.distributed:
                barrier()
            if self.callback:
                self.callback.on_epoch_end(epoch, row)
        if out is not None and world.rank == 0:
            save_checkpoint(out / MODEL_NAME, self.model, self._full_meta())
        if world.distributed:
            barrier()
        self.model.eval()
        return self.history


def _broadcast_module(model: nn.Module, buffers_only: bool = False) -> None:
    import torch.distributed as dist

    tensors = list(model.buffers()) if buffers_only else [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def _sum_over_ranks(sums: dict[str, float], extra: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (sums, extra))
    total: dict[str, float] = {}
    total_extra: dict[str, float] = {}
    for s, e in gathered:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
        for k, v in e.items():
            total_extra[k] = total_extra.get(k, 0.0) + v
    return total, total_extra


def _from_rank0(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
