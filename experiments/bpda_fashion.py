"""Obfuscated gradients on Fashion-MNIST (issue 23, part 1): PGD through a gradient-masking
preprocessing looks robust; PGD through BPDA breaks it; evaluate's checks flag the masking.

    python experiments/bpda_fashion.py --images 500 --eval-images 200

Model: the embedded LeNet (Gaussian-trained, sd 0.25). Defenses: 3-bit depth reduction
and a 3x3 median filter in front of it. Threat model: l_inf eps 0.1, PGD-40 with 1
restart (step 2.5 eps / 40), the same seed for every row.
"""

import argparse
import time
import warnings

import torch

from smoothguard.attacks import BPDA, PGD, RobustnessWarning
from smoothguard.data import load_dataset
from smoothguard.evaluation.robustness import build_cascade, evaluate_robustness
from smoothguard.models import BitDepthReduction, MedianFilter, defended, load_default_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500, help="test images (every 20th) for the PGD rows")
    ap.add_argument("--eval-images", type=int, default=200, help="test images for the evaluate cascade")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_default_model()
    data = load_dataset("fashion-mnist", "test").subset(skip=20, max_count=args.images)
    x, y = data.images, data.labels
    print(f"{len(y)} Fashion-MNIST test images, l_inf eps 0.1, PGD-40\n")
    print("| defense | clean acc. | PGD through the defense | PGD through BPDA (identity) | zero-gradient warning |")
    print("|---|---|---|---|---|")
    for name, layer in (("none", None), ("3-bit depth reduction", BitDepthReduction(3)),
                        ("3x3 median filter", MedianFilter(3))):
        target = model if layer is None else defended(model, layer)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plain = PGD(target, norm="linf", eps=0.1, steps=40, seed=0).run(x, y)
        flagged = any(issubclass(w.category, RobustnessWarning) and "gradient" in str(w.message) for w in caught)
        if layer is None:
            bpda_acc = "-"
        else:
            res = PGD(BPDA(model, layer), norm="linf", eps=0.1, steps=40, seed=0).run(x, y)
            # decided by the real defended model on BPDA's points
            bpda_acc = f"{100 * float((target(res.x_adv).argmax(1) == y).float().mean()):.1f} %"
        print(f"| {name} | {100 * plain.clean_accuracy:.1f} % | {100 * plain.robust_accuracy:.1f} % | {bpda_acc} | "
              f"{'yes' if flagged else 'no'} |  <!-- {time.perf_counter() - t0:.0f} s -->")
    n = args.eval_images
    xe, ye = x[:n], y[:n]
    print(f"\nevaluate (cascade fgsm, pgd, square) on the 3-bit defended model, {len(ye)} images:")
    target = defended(model, BitDepthReduction(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate_robustness(target, xe, ye, build_cascade(target, "linf", 0.1, attacks=["fgsm", "pgd", "square"]))
    for row in ev.rows:
        print(f"  {row.label}: accuracy {100 * row.accuracy:.1f} %")
    for w in caught:
        if issubclass(w.category, RobustnessWarning):
            print(f"  RobustnessWarning: {str(w.message)[:200]}")


if __name__ == "__main__":
    main()
