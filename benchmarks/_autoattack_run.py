"""One AutoAttack "standard" run in a process of its own, for benchmarks/bench_evaluate.py.

Loads the checkpoint with smoothguard's safe loader (weights only) and the same test images
as ``smoothguard evaluate --max M`` (the first M test images), runs the reference implementation found under
``--autoattack-src`` (never a dependency of smoothguard) and writes, per image, whether it
is still classified correctly after the attack.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--autoattack-src", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--max", type=int, default=100)
    p.add_argument("--norm", default="linf")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.autoattack_src)
    from autoattack import AutoAttack

    from smoothguard.data import load_dataset
    from smoothguard.models import load_checkpoint, load_default_model

    model, _ = load_default_model() if a.model is None else load_checkpoint(a.model)
    model.eval()
    ds = load_dataset(a.data, "test")
    x, y = ds.images[:a.max], ds.labels[:a.max]  # evaluate --max M: the first M test images
    aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[a.norm], eps=a.eps, version="standard", device="cpu",
                    verbose=False)
    x_adv = aa.run_standard_evaluation(x, y, bs=500)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).long().tolist()
    with open(a.out, "w") as f:
        json.dump({"robust": robust}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
