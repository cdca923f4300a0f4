"""Robust and non-robust features on Fashion-MNIST (issue 23, part 4; Ilyas et al. 2019,
"Adversarial Examples Are Not Bugs, They Are Features").

    python experiments/robust_features.py --train 5000 --out runs/robust_features --threads 1

The defaults are the settings of RESULTS.md's table (about 1 CPU-hour on a shared machine).

Pipeline (every stage is saved under --out and reused when the script is run again):

Each stage records the settings it depends on (OUT/<stage>.json) and is reused only when
they match; a stage whose settings changed is refused (use another --out, or delete it).

1. source models on the first --train training images, with the one trainer: a standard
   LeNet (objective ``standard``) and a robust LeNet (``pgd_at``, l_2, --robust-eps);
2. D_R: each training image replaced by an image whose robust-model penultimate
   representation matches it, from another training image (normalized l_2 gradient
   descent, --match-steps steps of --match-step, the iterate of smallest distance),
   label y; D_det: each image moved by targeted l_2 PGD (--det-eps, --det-steps) on the
   standard model toward t = (y + 1) mod 10 and labelled t;
3. standard LeNets trained on D_R and D_det, same recipe (the standard source model is
   the standard model on D, the original subset);
4. evaluation of every model on the original test set: clean accuracy on all 10,000 test
   images; PGD-20 (1 restart, step 2.5 eps / 20) at l_inf --linf-eps and at l_2 --l2-eps on
   --attack-images test images (every k-th).

Writes OUT/table.md and OUT/results.json (atomically) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from smoothguard.attacks import PGD
from smoothguard.contract import write_text_atomic
from smoothguard.data import Dataset, load_dataset
from smoothguard.models import get_model, load_checkpoint
from smoothguard.training import TrainConfig, Trainer, get_objective
from smoothguard.training.robust_features import non_robust_dataset, robust_dataset


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/robust_features")
    ap.add_argument("--train", type=int, default=5000, help="first N Fashion-MNIST training images")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of every model (sources and the three final ones)")
    ap.add_argument("--robust-eps", type=float, default=1.0, help="l_2 eps of the robust source model (PGD-AT)")
    ap.add_argument("--robust-steps", type=int, default=5, help="PGD steps of its training attack")
    ap.add_argument("--match-steps", type=int, default=100, help="representation-matching steps (paper: 1000)")
    ap.add_argument("--match-step", type=float, default=0.3, help="l_2 length of each matching step (paper: 0.1)")
    ap.add_argument("--start", choices=("image", "noise"), default="image")
    ap.add_argument("--det-eps", type=float, default=3.0,
                    help="l_2 eps of D_det's targeted attack (paper: 0.5 on CIFAR)")
    ap.add_argument("--det-steps", type=int, default=40, help="its PGD steps (paper: 100)")
    ap.add_argument("--linf-eps", type=float, default=0.1)
    ap.add_argument("--l2-eps", type=float, default=1.0)
    ap.add_argument("--attack-images", type=int, default=500, help="test images attacked (every k-th of 10,000)")
    ap.add_argument("--batch", type=int, default=500, help="batch of the dataset constructions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stop-after", choices=("det", "robust_source"), default=None,
                    help="stop after the non-robust branch / the robust source model (and evaluate what is built)")
    return ap.parse_args()


def new_model(info, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_model("lenet", info.num_classes, info.input_shape, info.mean, info.std)


def same_settings(out: Path, name: str, settings: dict) -> bool:
    """True when stage ``name`` exists with these settings; refuses other settings."""
    f = out / f"{name}.json"
    if not f.exists():
        return False
    old = json.loads(f.read_text())
    if old != settings:
        raise SystemExit(f"stage {name} in {out} was made with other settings ({old} vs {settings}); "
                         "choose another --out or delete that stage")
    return True


def train(name: str, objective, data: Dataset, test: Dataset, args, out: Path, log: dict,
          settings: dict) -> torch.nn.Module:
    """Train (or reuse) the model OUT/name/model.pt."""
    path = out / name / "model.pt"
    settings = {**settings, "epochs": args.epochs, "seed": args.seed, "train": args.train}
    if same_settings(out, name, settings) and path.exists():
        model, meta = load_checkpoint(path)
        print(f"[{name}] reusing {path}")
        log[name] = {"train_seconds": meta.get("train_seconds"), "reused": True}
        return model.eval()
    model = new_model(data.info, args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.01, optimizer="sgd", momentum=0.9,
                      weight_decay=5e-4, schedule="cosine", seed=args.seed, eval_noise_sd=0.0)
    t0 = time.perf_counter()
    hist = Trainer(model, objective, cfg).fit(data, test, out_dir=out / name)
    secs = time.perf_counter() - t0
    print(f"[{name}] {secs:.0f} s, last epoch {hist[-1]}")
    log[name] = {"train_seconds": secs, "last_epoch": hist[-1]}
    write_text_atomic(out / f"{name}.json", json.dumps(settings) + "\n", "stage settings")
    return model.eval()


def cached_dataset(name: str, out: Path, build, info, settings: dict) -> tuple[Dataset, dict]:
    path = out / f"{name}.pt"
    if same_settings(out, name, settings) and path.exists():
        blob = torch.load(path, weights_only=True)
        print(f"[{name}] reusing {path}")
        return Dataset(blob["images"], blob["labels"], info, blob["indices"]), json.loads(blob["stats_json"])
    t0 = time.perf_counter()
    ds, stats = build()
    stats["seconds"] = time.perf_counter() - t0
    tmp = path.with_suffix(".tmp")
    torch.save({"images": ds.images, "labels": ds.labels, "indices": ds.indices,
                "stats_json": json.dumps(stats)}, tmp)
    tmp.replace(path)
    write_text_atomic(out / f"{name}.json", json.dumps(settings) + "\n", "stage settings")
    print(f"[{name}] {stats}")
    return ds, stats


def attack_accuracy(model, x, y, norm: str, eps: float, seed: int) -> float:
    res = PGD(model, norm=norm, eps=eps, steps=20, restarts=1, seed=seed).run(x, y)
    return res.robust_accuracy


@torch.no_grad()
def clean_accuracy(model, test: Dataset) -> float:
    correct = 0
    for i in range(0, len(test), 1000):
        correct += int((model(test.images[i:i + 1000]).argmax(1) == test.labels[i:i + 1000]).sum())
    return correct / len(test)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads")}

    train_all = load_dataset("fashion-mnist", "train")
    data = train_all.subset(max_count=args.train)
    test = load_dataset("fashion-mnist", "test")
    monitor = test.subset(skip=10)  # per-epoch test accuracy in the training logs
    log: dict = {"settings": settings, "train_images": len(data)}

    rob = {"robust_eps": args.robust_eps, "robust_steps": args.robust_steps}
    src = {"epochs": args.epochs, "seed": args.seed, "train": args.train}
    det_set = {**src, "det_eps": args.det_eps, "det_steps": args.det_steps}
    r_set = {**src, **rob, "match_steps": args.match_steps, "match_step": args.match_step, "start": args.start}

    # the non-robust branch: standard source -> D_det -> standard model on D_det
    standard_src = train("source_standard", get_objective("standard"), data, monitor, args, out, log, {})

    def build_det():
        ds, s = non_robust_dataset(standard_src, data, eps=args.det_eps, steps=args.det_steps,
                                   batch_size=args.batch, seed=args.seed)
        return ds, {"l2_norm_mean": float(s.norms.mean()), "l2_norm_max": float(s.norms.max()),
                    "target_hit_rate": float(s.target_hit.float().mean())}

    d_det, log["D_det"] = cached_dataset("d_det", out, build_det, data.info, det_set)
    log["D_det"]["standard_source_acc_on_D_det_labels"] = clean_accuracy(standard_src, d_det)
    # the standard source is the standard model on D (same data, recipe and seed)
    models = {"standard on D (source of D_det)": standard_src,
              "standard on D_det": train("on_d_det", get_objective("standard"), d_det, monitor, args, out, log,
                                         det_set)}
    if args.stop_after == "det":
        return report(models, test, args, out, log)

    # the robust branch: PGD-AT source -> D_R -> standard model on D_R
    robust_obj = get_objective("pgd_at", eps=args.robust_eps, norm="l2", attack_steps=args.robust_steps)
    robust_src = train("source_robust", robust_obj, data, monitor, args, out, log, rob)
    models[f"PGD-AT l_2 {args.robust_eps} on D (source of D_R)"] = robust_src
    # does a robust model see the original class y or the new label t in D_det's images?
    with torch.no_grad():
        pred = torch.cat([robust_src(d_det.images[i:i + 1000]).argmax(1) for i in range(0, len(d_det), 1000)])
    log["D_det"]["robust_source_predicts_y"] = float((pred == data.labels).float().mean())
    log["D_det"]["robust_source_predicts_t"] = float((pred == d_det.labels).float().mean())
    if args.stop_after == "robust_source":
        return report(models, test, args, out, log)

    def build_r():
        ds, m = robust_dataset(robust_src, data, steps=args.match_steps, step_size=args.match_step,
                               start=args.start, batch_size=args.batch, seed=args.seed)
        rel0, rel = m.start_distance / m.target_norm, m.distance / m.target_norm
        return ds, {"relative_distance_start_mean": float(rel0.mean()), "relative_distance_mean": float(rel.mean()),
                    "relative_distance_median": float(rel.median()),
                    "l2_to_original_mean": float((ds.images - data.images).flatten(1).norm(dim=1).mean())}

    d_r, log["D_R"] = cached_dataset("d_r", out, build_r, data.info, r_set)
    # how the sources see D_R (its images keep the label y)
    log["D_R"]["robust_source_acc_on_D_R"] = clean_accuracy(robust_src, d_r)
    log["D_R"]["standard_source_acc_on_D_R"] = clean_accuracy(standard_src, d_r)
    models["standard on D_R"] = train("on_d_r", get_objective("standard"), d_r, monitor, args, out, log, r_set)
    report(models, test, args, out, log)


def report(models: dict, test: Dataset, args, out: Path, log: dict) -> None:
    """Clean accuracy on the whole test set, PGD-20 accuracy at l_inf and l_2 on a subset;
    writes OUT/table.md and OUT/results.json."""
    att = test.subset(skip=max(1, len(test) // args.attack_images), max_count=args.attack_images)
    rows = []
    for name, model in models.items():
        t0 = time.perf_counter()
        row = {"model": name, "clean": clean_accuracy(model, test),
               "linf": attack_accuracy(model, att.images, att.labels, "linf", args.linf_eps, args.seed),
               "l2": attack_accuracy(model, att.images, att.labels, "l2", args.l2_eps, args.seed),
               "eval_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(row)
    log["rows"] = rows
    table = [f"| model | clean (10,000 test images) | PGD-20 l_inf {args.linf_eps} ({len(att)}) "
             f"| PGD-20 l_2 {args.l2_eps} ({len(att)}) |", "|---|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['model']} | {100 * r['clean']:.1f} % | {100 * r['linf']:.1f} % | {100 * r['l2']:.1f} % |")
    text = "\n".join(table) + "\n"
    write_text_atomic(out / "table.md", text, "table")
    write_text_atomic(out / "results.json", json.dumps(log, indent=1, default=str) + "\n", "results")
    print(json.dumps({k: log[k] for k in ("D_R", "D_det") if k in log}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
