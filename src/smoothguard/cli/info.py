"""``smoothguard info``: describe a checkpoint (architecture, data, training, metrics)."""

from __future__ import annotations

import argparse
import json

from smoothguard.models.checkpoint import default_model_path, read_checkpoint

HELP = "show a checkpoint's metadata (default: the embedded model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="checkpoint file (default: the embedded model)")


def run(args: argparse.Namespace) -> int:
    path = args.model or default_model_path()
    meta = read_checkpoint(path)["meta"]
    print(f"# {path}")
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0
