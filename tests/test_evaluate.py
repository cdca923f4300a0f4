"""Tests of the robustness evaluation (smoothguard.evaluation.robustness) and of the
``smoothguard evaluate`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from smoothguard.attacks import APGD, FGSM, PGD, RobustnessWarning, Square, TransferAttack
from smoothguard.cli import main
from smoothguard.evaluation.robustness import (
    BLACK_BOX,
    TRANSFER,
    CascadeAttack,
    accuracy_vs_eps,
    build_cascade,
    evaluate_robustness,
    restart_loss_distribution,
)

torch.set_num_threads(1)


def small_problem(seed: int = 0, n: int = 48):
    """A random float64 MLP on 1x6x6 images and points it classifies as their labels
    (float64 keeps per-example results independent of the batch composition)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 10)).double().eval()
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model[3].bias -= model(x).mean(0)  # balance the classes
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # three points misclassified before any attack
    return model, x, y


def deterministic_rows(model, eps=0.02):
    """Attacks without random start: each point's outcome does not depend on which other
    points share its batch, so cascade and stand-alone runs are comparable point by point."""
    kw = dict(eps=eps, seed=0, sanity_checks=False)
    return [
        CascadeAttack("fgsm", "FGSM", FGSM(model, **kw)),
        CascadeAttack("pgd", "PGD-5", PGD(model, steps=5, random_start=False, **kw)),
        CascadeAttack("pgd-cw", "PGD-5 CW", PGD(model, steps=5, random_start=False, loss="cw", **kw)),
        CascadeAttack("apgd-dlr", "APGD-DLR", APGD(model, steps=10, random_start=False, loss="dlr", **kw)),
    ]


def alone_success(rows, x, y):
    return {r.key: r.attack.run(x, y).success for r in rows}


@pytest.mark.parametrize("independent", [False, True])
def test_worst_case_is_the_or_of_the_attacks_successes(independent):
    model, x, y = small_problem()
    rows = deterministic_rows(model)
    alone = alone_success(rows, x, y)
    ev = evaluate_robustness(model, x, y, rows, batch_size=7, independent=independent)
    correct = model(x).argmax(1) == y
    union = torch.zeros_like(correct)
    for s in alone.values():
        union |= s
    assert torch.equal(ev.robust, correct & ~union)
    # the instance is non-trivial: the attacks disagree and some points survive
    assert 0 < int(ev.robust.sum()) < int(correct.sum())
    assert len({tuple(s.tolist()) for s in alone.values()}) > 1
    # every fooled point's stored example is inside the ball and fools the model
    fooled = ev.fooled_by >= 0
    assert bool((model(ev.x_adv[fooled]).argmax(1) != y[fooled]).all())
    assert float((ev.x_adv - x).abs().amax()) <= 0.02 + 1e-9
    if independent:
        for key, s in alone.items():
            assert torch.equal(ev.success[key] & correct, s & correct)


def test_table_accuracy_is_at_most_every_single_attack():
    model, x, y = small_problem(seed=1)
    rows = deterministic_rows(model)
    alone = alone_success(rows, x, y)
    ev = evaluate_robustness(model, x, y, rows, batch_size=16)
    correct = model(x).argmax(1) == y
    for key, s in alone.items():
        alone_acc = float((correct & ~s).double().mean())
        assert ev.robust_accuracy <= alone_acc + 1e-12, key
    accs = [r.accuracy for r in ev.rows]
    assert all(a >= b for a, b in zip(accs, accs[1:]))  # running worst case never increases
    assert accs[-1] == ev.robust_accuracy <= ev.clean_accuracy
    assert sum(r.fooled for r in ev.rows) == int((ev.fooled_by >= 0).sum())
    # the later rows only attacked what the earlier ones left
    assert ev.rows[1].attacked == ev.rows[0].attacked - ev.rows[0].fooled
    # the table: clean row, one row per attack, worst case; in percent
    table = ev.table()
    assert [t["attack"] for t in table[1:-1]] == [r.label for r in rows]
    assert table[-1]["accuracy_pct"] == pytest.approx(100 * ev.robust_accuracy, abs=0.01)
    assert "| FGSM |" in ev.to_markdown() and ev.to_csv().count("\n") == len(rows) + 3
    assert json.loads(ev.to_json())["robust_accuracy"] == pytest.approx(ev.robust_accuracy)


def test_independent_mode_reports_each_attacks_own_accuracy():
    model, x, y = small_problem(seed=2)
    rows = deterministic_rows(model)
    ev = evaluate_robustness(model, x, y, rows, independent=True)
    for r in ev.rows:
        assert r.alone_accuracy is not None and ev.robust_accuracy <= r.alone_accuracy
        assert r.attacked == int((model(x).argmax(1) == y).sum())
    assert min(r.alone_accuracy for r in ev.rows) >= ev.robust_accuracy


class Quantized(nn.Module):
    """Rounds its input before a linear layer: zero input gradients everywhere
    (gradient masking), yet easy to fool by search."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(36, 10)

    def forward(self, x):
        return self.lin(torch.round(x.flatten(1) * 4) / 4 * 10)


def test_gradient_masking_warning_when_blackbox_beats_whitebox():
    model = Quantized().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(eps=0.2, seed=0, sanity_checks=False)
    rows = [CascadeAttack("pgd", "PGD", PGD(model, steps=5, random_start=False, **kw)),
            CascadeAttack("square", "Square", Square(model, max_queries=300, **kw), kind=BLACK_BOX)]
    with pytest.warns(RobustnessWarning, match="gradient masking"):
        ev = evaluate_robustness(model, x, y, rows)
    assert ev.rows[0].fooled == 0 and ev.rows[1].fooled > 0
    assert any("gradient masking" in w for w in ev.warnings)
    assert "**Warning:**" in ev.to_markdown()


def test_no_masking_warning_when_whitebox_finds_everything():
    model, x, y = small_problem(seed=4, n=24)
    rows = build_cascade(model, "linf", 0.3, attacks=("pgd", "square"), steps=10, restarts=1, square_queries=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessWarning)
        ev = evaluate_robustness(model, x, y, rows)
    assert ev.rows[-1].attacked == 0 and ev.warnings == []


def test_transfer_row_uses_the_target_predictions():
    target, x, y = small_problem(seed=5)
    source, _, _ = small_problem(seed=6)
    src_atk = PGD(source, eps=0.05, steps=5, seed=0, sanity_checks=False)
    row = CascadeAttack("transfer:src", "transfer", TransferAttack(src_atk, target), kind=TRANSFER)
    ev = evaluate_robustness(target, x, y, [row], masking_tolerance=0.5)
    with torch.no_grad():
        assert torch.equal(ev.clean_pred, target(x).argmax(1))
        assert torch.equal(ev.adv_pred, target(ev.x_adv).argmax(1))
        src_fooled = source(src_atk.run(x, y).x_adv).argmax(1) != y
    # success is judged on the target, not on the surrogate
    assert not torch.equal(ev.success["transfer:src"], src_fooled)
    # a row crafted directly on another model is refused
    with pytest.raises(ValueError, match="another model"):
        evaluate_robustness(target, x, y, [CascadeAttack("pgd", "PGD", src_atk)])


def test_build_cascade_validates_and_orders_rows():
    model, _, _ = small_problem()
    with pytest.raises(ValueError, match=r"unknown attack 'bim'; allowed: fgsm, pgd"):
        build_cascade(model, "linf", 0.1, attacks=("pgd", "bim"))
    with pytest.raises(ValueError, match="norm must be one of"):
        build_cascade(model, "l1", 0.1)
    rows = build_cascade(model, "l2", 1.0, attacks=("square", "fgsm", "pgd"), sources=[("s", model)])
    assert [r.key for r in rows] == ["fgm", "pgd", "transfer:s", "square"]
    assert [r.kind for r in rows] == ["white-box", "white-box", "transfer", "black-box"]
    with pytest.raises(ValueError, match="kind must be one of"):
        CascadeAttack("x", "x", rows[0].attack, kind="grey-box")


def test_targeted_row_counts_untargeted_success():
    model, x, y = small_problem(seed=7)
    atk = APGD(model, eps=0.03, steps=10, loss="dlr", random_start=False, seed=0, sanity_checks=False)
    ev_t = evaluate_robustness(model, x, y, [CascadeAttack("apgd-t", "APGD-T", atk, n_targets=3)])
    fooled = ev_t.fooled_by >= 0
    assert bool((model(ev_t.x_adv[fooled]).argmax(1) != y[fooled]).all())
    assert ev_t.robust_accuracy < ev_t.clean_accuracy


def test_accuracy_vs_eps_is_monotone_and_starts_at_clean_accuracy():
    model, x, y = small_problem(seed=8)
    curve = accuracy_vs_eps(model, x, y, "linf", [0.05, 0.0, 0.02, 0.1], steps=5)
    assert curve.eps == [0.0, 0.02, 0.05, 0.1]
    assert curve.accuracy[0] == pytest.approx(float((model(x).argmax(1) == y).double().mean()))
    assert all(a >= b for a, b in zip(curve.accuracy, curve.accuracy[1:]))
    assert curve.accuracy[-1] < curve.accuracy[0]


def test_restart_losses_one_finished_run_per_restart():
    model, x, y = small_problem(seed=9, n=4)
    losses = restart_loss_distribution(model, x, y, "linf", 0.05, steps=5, restarts=6)
    assert losses.shape == (4, 6) and bool(torch.isfinite(losses).all())
    assert float(losses.std(dim=1).max()) > 0  # random starts give different local maxima


def test_library_imports_without_matplotlib_or_tqdm():
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['tqdm'] = None; "
            "import smoothguard.evaluation.robustness as r; print(r.DEFAULT_CASCADE)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------
# the command


def test_evaluate_command_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--max", "10", "--steps", "5", "--restarts", "2", "--apgd-steps", "5", "--queries", "20",
            "--fab-steps", "3", "--apgd-targets", "2", "--curves", "--curve-steps", "3", "--eps-grid-linf", "0,0.1", "--eps-grid-l2", "0,1", "--loss-restarts", "4",
            "--loss-examples", "2", "--grid-examples", "3", "--threads", "1", "--out-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "worst case (all attacks)" in printed and "FAB-T (3, 2 targets)" in printed
    for name in ("table.md", "table.csv", "table.json", "per_example.tsv", "accuracy_vs_eps.png",
                 "accuracy_vs_eps.svg", "restart_losses.png", "restart_losses.svg", "examples.png", "examples.svg"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))
    result = json.loads((out / "table.json").read_text())
    ev = result["evaluation"]
    assert [r["key"] for r in ev["rows"]] == ["fgsm", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert result["settings"]["command"].startswith("smoothguard evaluate")
    assert result["settings"]["speed"]["rule"]  # the speed choice is recorded, with the rule that made it
    assert [c["norm"] for c in result["curves"]] == ["linf", "l2"]
    per = (out / "per_example.tsv").read_text().splitlines()
    assert per[0].split("\t") == ["idx", "label", "clean_pred", "adv_pred", "norm", "fooled_by", "robust"]
    assert len(per) == 11
    robust = sum(int(line.split("\t")[-1]) for line in per[1:])
    assert robust / 10 == pytest.approx(ev["robust_accuracy"])
    assert all(float(line.split("\t")[4]) <= 0.1 + 1e-6 for line in per[1:])
    assert (out / "table.csv").read_text().splitlines()[0].startswith("attack,kind,attacked")


@pytest.mark.parametrize("argv, match", [
    (["--norm", "l3"], "--norm must be one of linf, l2"),
    (["--attacks", "pgd,bim"], "--attacks must be a comma-separated subset of fgsm, pgd, pgd-cw"),
    (["--eps", "2"], "--eps 2.0 > 1"),
    (["--restarts", "0"], "--restarts must be an integer >= 1"),
    (["--curves", "--eps-grid-l2", "0,x"], "--eps-grid-l2 must be comma-separated numbers"),
    (["--eps-grid-l2", "0,1"], "--eps-grid-l2 shapes the accuracy-vs-eps curves, which are opt-in: add --curves"),
    (["--curve-steps", "5"], "--curve-steps shapes the accuracy-vs-eps curves, which are opt-in: add --curves"),
    (["--curves", "--no-curves"], "--curves and --no-curves contradict each other"),
    (["--fab-steps", "0"], "--fab-steps must be an integer >= 1"),
    (["--transfer-from", "/nonexistent.pt"], "--transfer-from: no such checkpoint"),
])
def test_evaluate_bad_options_exit_2(argv, match, tmp_path, capsys):
    assert main(["evaluate", *argv, "--out-dir", str(tmp_path / "x")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_evaluate_out_dir_that_cannot_be_created_exits_2(capsys):
    assert main(["evaluate", "--max", "2", "--threads", "1", "--out-dir", "/dev/null/x"]) == 2
    assert "--out-dir /dev/null/x: cannot create the folder" in capsys.readouterr().err


def test_evaluate_default_run_has_no_curves_or_histogram(tmp_path, capsys):
    """Curves and the restart histogram are opt-in: a default run writes the table, the
    per-example rows and the image grid only, and --no-curves (deprecated) still parses."""
    out = tmp_path / "ev"
    argv = ["evaluate", "--max", "4", "--apgd-steps", "2", "--fab-steps", "2", "--apgd-targets", "1",
            "--queries", "4", "--grid-examples", "2", "--threads", "1", "--no-curves", "--out-dir", str(out)]
    assert main(argv) == 0
    assert "--no-curves is deprecated" in capsys.readouterr().err
    result = json.loads((out / "table.json").read_text())
    assert "curves" not in result and "restart_losses" not in result
    assert not list(out.glob("accuracy_vs_eps*")) and not list(out.glob("restart_losses*"))
    assert (out / "examples.png").exists() or result["evaluation"]["clean_accuracy"] == 0
    assert not (tmp_path / "x").exists()


def test_evaluate_command_transfer_row_and_l2(tmp_path, capsys):
    from smoothguard.models import get_model, load_default_model, save_checkpoint

    _, meta = load_default_model()
    torch.manual_seed(0)
    src = get_model("lenet", meta["num_classes"], meta["in_shape"], meta["mean"], meta["std"])
    path = tmp_path / "surrogate.pt"
    save_checkpoint(path, src, {k: meta[k] for k in ("arch", "num_classes", "in_shape", "mean", "std")})
    out = tmp_path / "ev"
    argv = ["evaluate", "--max", "6", "--norm", "l2", "--attacks", "fgsm,pgd", "--steps", "3", "--restarts", "1",
            "--transfer-from", str(path), "--no-plots", "--threads", "1",
            "--out-dir", str(out)]
    assert main(argv) == 0
    ev = json.loads((out / "table.json").read_text())["evaluation"]
    assert ev["eps"] == 1.0 and ev["norm"] == "l2"
    assert [r["key"] for r in ev["rows"]] == ["fgm", "pgd", "transfer:surrogate.pt"]
    assert ev["rows"][2]["kind"] == "transfer"
    assert "transfer: PGD-3 on surrogate.pt" in capsys.readouterr().out
    assert not (out / "examples.png").exists()


def test_worst_case_norms_never_exceed_eps_in_float64():
    """float32 rounding of x_adv - x must not put a point outside the ball: pixels of
    26/255 pushed towards 0 by 0.1 used to give |delta| = float32(0.1) > 0.1."""
    from smoothguard.data import load_dataset
    from smoothguard.models import load_default_model

    model, _ = load_default_model()
    ds = load_dataset("demo")
    x, y = ds.images[:16], ds.labels[:16]
    rows = build_cascade(model, "linf", 0.1, attacks=("fgsm", "pgd"), steps=3, restarts=1)
    ev = evaluate_robustness(model, x, y, rows)
    assert float((ev.x_adv.double() - x.double()).abs().max()) <= 0.1
    assert float(ev.norms.double().max()) <= 0.1


def test_readme_defaults_table_is_smoothguard_defaults():
    """The README's "Defaults: one per concept" table lists every constant of
    smoothguard.defaults with its value (every entry of a per-norm or per-device table),
    and nothing else."""
    import re
    from pathlib import Path

    import smoothguard.defaults as D

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Defaults: one per concept", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| ([^|]+) \| `([^`]+)` \|$", section, flags=re.M)
    assert rows, "no rows found in the README's defaults table"
    seen, entries = set(), set()
    for value, const in rows:
        m = re.fullmatch(r'(\w+)(?:\["(\w+)"\])?', const)
        assert m, const
        v = getattr(D, m.group(1))
        v = v[m.group(2)] if m.group(2) else v
        assert float(value) == float(v), f"README says {const} = {value}, smoothguard.defaults has {v}"
        seen.add(m.group(1))
        entries.add((m.group(1), m.group(2)))
    constants = {k for k, v in vars(D).items() if k.isupper() and isinstance(v, (int, float, dict))}
    assert seen == constants, f"in defaults but not in the README table: {constants - seen}"
    tables = {(k, key) for k in constants if isinstance(getattr(D, k), dict) for key in getattr(D, k)}
    assert tables <= entries, f"table entries missing from the README: {sorted(tables - entries)}"


def test_evaluate_conv_grad_is_the_cpu_default_and_recorded(tmp_path):
    """The default run records conv_grad on (a LeNet on the CPU); --no-conv-grad records it
    off, with the same robust-accuracy table on these images (the input gradient differs
    only by rounding)."""
    tables = {}
    for name, flag in (("plain", ["--no-conv-grad"]), ("conv", [])):
        out = tmp_path / name
        argv = ["evaluate", "--max", "6", "--attacks", "fgsm,pgd", "--steps", "3", "--restarts", "1",
                "--no-plots", "--threads", "1", *flag, "--out-dir", str(out)]
        assert main(argv) == 0
        result = json.loads((out / "table.json").read_text())
        assert result["settings"]["speed"]["conv_grad"] is (name == "conv")
        tables[name] = [(r["key"], r["fooled"], r["accuracy"]) for r in result["evaluation"]["rows"]]
    assert tables["plain"] == tables["conv"]
