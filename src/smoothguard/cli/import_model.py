"""``smoothguard import-model``: a model trained elsewhere into a smoothguard checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoothguard.cli._conventions import DEFAULT_DATA
from smoothguard.cli.common import DataSelection, add_data_arguments, parse_floats
from smoothguard.models import MODELS

HELP = "wrap a model trained elsewhere (state dict, Cohen et al.'s checkpoint, your factory) into a checkpoint"
DESCRIPTION = """\
Wrap weights trained elsewhere into a smoothguard checkpoint that every command takes as
--model. Either a registry architecture (--arch lenet|madry_cnn|cifar_resnet20|cifar_resnet110)
and a weights file (a plain state dict, with or without DataParallel's 'module.', or Cohen et
al.'s released checkpoints: {'arch', 'state_dict'} with '1.module.' keys), or your own
architecture: --factory MODULE:CALLABLE (your code, imported and called with no arguments;
the checkpoint stores the weights and this reference, never code, so later commands take
--model-factory MODULE:CALLABLE --weights OUT; a factory returning a get_model() model gives
a checkpoint that needs no code at all). Weights are read with torch.load(weights_only=True).
The model must take [0, 1] images: give --mean/--std when the network was trained on
normalized inputs (a Normalize layer is put in front), or --no-normalize when it takes
[0, 1] pixels as they are. Checks the result with a forward pass on --check-images images of
--data and prints their accuracy."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to import")
    src.add_argument("--weights", default=None,
                     help="weights file: a state dict, a dict holding one under 'state_dict'/'model_state_dict'/"
                          "'model', Cohen et al.'s checkpoint.pth.tar, or a smoothguard checkpoint")
    src.add_argument("--arch", default=None, choices=MODELS,
                     help="registry architecture of the weights (Cohen et al.'s files name their own)")
    src.add_argument("--factory", default=None, metavar="MODULE:CALLABLE",
                     help="your own architecture: MODULE:CALLABLE or path/to/file.py:CALLABLE returning the "
                          "nn.Module (your code runs: it is imported and called with no arguments)")
    m = p.add_argument_group("metadata (what the commands need)")
    m.add_argument("--mean", default=None, help="comma-separated per-channel mean the network was trained behind")
    m.add_argument("--std", default=None, help="comma-separated per-channel std (with --mean)")
    m.add_argument("--no-normalize", action="store_true",
                   help="the network takes [0, 1] pixels as they are (no normalization layer)")
    m.add_argument("--num-classes", type=int, default=None, help="K (default: the data's)")
    m.add_argument("--in-shape", default=None, metavar="C,H,W", help="input shape (default: the data's)")
    m.add_argument("--noise-sd", type=float, default=None,
                   help="Gaussian noise sd it was trained with (pixel units; certify's default --sigma). Cohen et "
                        "al.'s files: read from a 'noise_S' folder in the path when not given")
    add_data_arguments(p, default=DEFAULT_DATA, split="test", selection=False)
    p.add_argument("--check-images", type=int, default=100,
                   help="images of --data for the checking forward pass (0: no check, e.g. without data)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")


def _floats(text: str | None, name: str) -> list[float] | None:
    return None if text is None else parse_floats(text, name)


def _noise_from_path(path: str) -> float | None:
    """Cohen et al. release models as models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar."""
    for part in reversed(Path(path).resolve().parts):
        if part.startswith("noise_"):
            try:
                return float(part[len("noise_"):])
            except ValueError:
                return None
    return None


def validate(args: argparse.Namespace) -> tuple[list[float] | None, list[float] | None]:
    """The option checks that need no file or data (also run on ``smoothguard run`` steps);
    returns the parsed ``--mean`` and ``--std``."""
    from smoothguard.contract import ContractError, check_int, check_nonnegative

    if args.arch is not None and args.factory is not None:
        raise ContractError("give --arch NAME (a registry architecture) or --factory MODULE:CALLABLE (your own), "
                            "not both")
    if args.factory is None and args.weights is None:
        raise ContractError("give --weights FILE (with --arch NAME; Cohen et al.'s files name their own) or "
                            "--factory MODULE:CALLABLE [--weights FILE]")
    mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
    if (mean is None) != (std is None):
        raise ContractError("give --mean and --std together (one value per channel)")
    if args.no_normalize and mean is not None:
        raise ContractError("--no-normalize and --mean/--std contradict each other; give one")
    check_int("--check-images", args.check_images, minimum=0)
    if args.noise_sd is not None:
        check_nonnegative("--noise-sd", args.noise_sd)
    if Path(args.out).resolve() == (Path(args.weights).resolve() if args.weights else None):
        raise ContractError("--out must differ from --weights (the original file stays as it is)")
    return mean, std


@dataclass(frozen=True)
class ImportOptions:
    """What ``smoothguard import-model`` does: read ``weights`` (a registry ``arch``, Cohen et
    al.'s layout, or the model of ``factory``), put ``mean``/``std`` normalization in front
    unless ``no_normalize``, check it on ``check_images`` images of ``data`` (with noise
    ``noise_sd`` and ``seed``), and write the checkpoint ``out``. ``in_shape`` (C,H,W text)
    and ``num_classes`` default to the data's; ``argv`` is recorded in the checkpoint."""

    out: str
    weights: str | None = None
    arch: str | None = None
    factory: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    no_normalize: bool = False
    in_shape: str | None = None
    num_classes: int | None = None
    noise_sd: float | None = None
    check_images: int = 0
    data: DataSelection = field(default_factory=lambda: DataSelection(DEFAULT_DATA))
    device: Any = "cpu"
    seed: int = 0
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace) -> ImportOptions:
    """The checked, typed options of the command line."""
    mean, std = validate(args)
    return ImportOptions(out=args.out, weights=args.weights, arch=args.arch, factory=args.factory, mean=mean,
                         std=std, no_normalize=args.no_normalize, in_shape=args.in_shape,
                         num_classes=args.num_classes, noise_sd=args.noise_sd, check_images=args.check_images,
                         data=DataSelection.from_args(args), device=args.device, seed=args.seed,
                         argv=tuple(args.argv))


def run(args: argparse.Namespace) -> int:
    return import_model(options(args))


def import_model(opts: ImportOptions) -> int:
    """Import, check and write the checkpoint: the exit code."""
    from smoothguard.contract import ContractError
    from smoothguard.models import save_checkpoint
    from smoothguard.models.foreign import (build_from_factory, import_registry_model, infer_num_classes,
                                            match_state_dict, read_weights, wrap_normalize)

    mean, std = opts.mean, opts.std
    noise_sd = opts.noise_sd  # may be read from the weights' path below
    data = None
    if opts.check_images > 0 or opts.in_shape is None or opts.num_classes is None:
        data = opts.data.load(select=False)
    in_shape = [int(v) for v in parse_floats(opts.in_shape, "--in-shape")] if opts.in_shape else \
        list(data.info.input_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ContractError(f"--in-shape must be C,H,W (three positive integers); got {opts.in_shape!r}")
    num_classes = opts.num_classes if opts.num_classes is not None else data.info.num_classes

    notes: list[str] = []
    if opts.factory is None:
        _, info = read_weights(opts.weights)
        if info["layout"] == "plain" and mean is None and not opts.no_normalize:
            raise ContractError(
                "was the network trained on normalized inputs? give --mean M1,M2,.. --std S1,S2,.. (a Normalize "
                "layer goes in front, so the model takes [0, 1] pixels) or --no-normalize (it takes [0, 1] pixels "
                "as they are)")
        model, meta = import_registry_model(opts.weights, opts.arch, num_classes, in_shape, mean, std)
        notes.append(f"normalization: {meta['import']['normalization']}")
        if info["layout"] == "cohen":
            notes.append("keys mapped from Cohen et al.'s layout: " + meta["import"]["key_mapping"].split(" -> ")[1])
            if noise_sd is None and _noise_from_path(opts.weights) is not None:
                noise_sd = _noise_from_path(opts.weights)
                notes.append(f"noise_sd {noise_sd} read from the path ({Path(opts.weights).parent.name}); "
                             "--noise-sd overrides")
    else:
        net = build_from_factory(opts.factory)
        if opts.weights is not None:
            sd, _ = read_weights(opts.weights)
            net.load_state_dict(match_state_dict(sd, net, source=opts.weights))
        if hasattr(net, "build_meta"):  # built by get_model: a registry checkpoint, no code needed to load it
            if mean is not None:
                raise ContractError(f"the model of {opts.factory} comes from get_model and has its own Normalize "
                                    "layer; leave --mean/--std out")
            model, meta = net, dict(net.build_meta)
            in_shape, num_classes = list(meta["in_shape"]), int(meta["num_classes"])
            notes.append(f"{opts.factory} returns a get_model({meta['arch']!r}) model: the checkpoint loads with no "
                         "user code")
        else:
            if mean is None and not opts.no_normalize:
                raise ContractError("does the factory's model normalize its inputs itself? give --no-normalize if it "
                                    "takes [0, 1] pixels, or --mean/--std to put a Normalize layer in front")
            k = infer_num_classes(net, in_shape)
            if opts.num_classes is not None and k != opts.num_classes:
                raise ContractError(f"the factory's model returns {k} logits; --num-classes is {opts.num_classes}")
            num_classes = k
            model = wrap_normalize(net, in_shape, num_classes, mean, std)
            c = in_shape[0]
            meta = {"kind": "classifier", "arch": "factory", "factory": opts.factory, "num_classes": num_classes,
                    "in_shape": in_shape, "mean": mean or [0.0] * c, "std": std or [1.0] * c}
            notes.append(f"not a registry architecture: the checkpoint stores the weights and the reference "
                         f"{opts.factory!r} (no code); load it with --model-factory {opts.factory} --weights "
                         f"{opts.out}")
        meta["import"] = {"weights": str(Path(opts.weights).resolve()) if opts.weights else None,
                          "factory": opts.factory, "normalization": "given" if mean else "none"}
    if noise_sd is not None:
        meta["noise_sd"] = float(noise_sd)
    meta["command"] = "smoothguard " + " ".join(shlex.quote(a) for a in opts.argv)
    if int(meta["num_classes"]) != num_classes or list(meta["in_shape"]) != in_shape:
        raise ContractError(f"the model takes {tuple(meta['in_shape'])} with {meta['num_classes']} classes; the "
                            f"data / flags say {tuple(in_shape)} with {num_classes}")
    model = model.to(opts.device).eval()

    if opts.check_images > 0:
        from smoothguard.cli.attack import check_shape
        from smoothguard.contract import check_logits

        check_shape(meta, data, "the imported model")
        sub = data.subset(max_count=min(opts.check_images, len(data)))
        with torch.no_grad():
            logits = check_logits(model(sub.images.to(opts.device)), num_classes=num_classes, count=len(sub),
                                  name="the imported model")
        acc = float((logits.argmax(1).cpu() == sub.labels).float().mean())
        meta["import"]["check"] = {"data": data.info.name, "images": len(sub), "accuracy": acc}
        line = f"check: clean accuracy {100 * acc:.1f}% on {len(sub)} {data.info.name} images"
        if meta.get("noise_sd"):
            g = torch.Generator(device=opts.device).manual_seed(opts.seed)
            x = sub.images.to(opts.device)
            with torch.no_grad():
                noisy = model(x + meta["noise_sd"] * torch.randn(x.shape, generator=g, device=opts.device))
            line += (f", {100 * float((noisy.argmax(1).cpu() == sub.labels).float().mean()):.1f}% under noise sd "
                     f"{meta['noise_sd']}")
        notes.append(line)
        if acc <= 1.5 / num_classes:
            notes.append("warning: accuracy near chance: check --mean/--std (or --no-normalize), the class order "
                         "and --data")
    save_checkpoint(opts.out, model, meta)
    for n in notes:
        print(n, file=sys.stderr)
    print(f"wrote {opts.out} ({meta['arch']}, {num_classes} classes, input {tuple(in_shape)})")
    return 0
