"""Rows pinned before the sampler redesign (issue 19 item 3): Gaussian certify/predict, and
the attack and evaluate commands.

The data below was produced at commit c5b4d8cbb04617f5ffcf768822f3f2ccc1297ba6 (before
smoothing/sampler.py and smoothguard/runtime.py existed) by the CLI and the library with the
embedded LeNet, fixed seeds and sigma 0.5 (so that the four images include an abstention, a
wrong class and radii between the grid points). Every later version must reproduce it bit
for bit: the redesign moves code, it does not change a single count. Only the time column
is left out.

``smoothguard attack`` / ``evaluate`` rows were produced at the same commit by the same command
lines as below, every setting given (issue 18 later changed their defaults on purpose: eps,
steps, queries, batch, evaluate's cascade and curves), so the same flags mean the same
computation at both commits. Left out: time columns and what is timing or provenance.
The one setting no flag reaches is Square's p_init (c5b4d8c: 0.05 l_inf / 0.1 l_2; since
845c0eb, issue 18: 0.8, AutoAttack's): the Square rows were made at c5b4d8c with p_init 0.8
passed to its constructor (the default of today), the rest of the code as it was. With each
side's own default they differ; with the same p_init they are equal bit for bit in both
directions (c5b4d8c at 0.8 = HEAD; HEAD at 0.05/0.1 = c5b4d8c's plain rows).

The attack and evaluate rows are compared with every prediction, success flag, attack and
count equal and the norms within 1e-6 relative, not bit for bit: the pins were written on a
CPU with AVX2 only, and oneDNN's AVX-512 convolution kernels sum in another order (at
c5b4d8c itself, on an AVX-512 machine, the l2 rows' norms differ from them by ~1e-7
relative; the l_inf norms and everything else are equal).

One flag did not exist at c5b4d8c: ``--conv-grad`` (issue 18: the first convolution's input
gradient by GEMM + shifted sums, on by default for CPU since). It takes the same gradient
summed in another order, so the pinned lines say ``--no-conv-grad`` (oneDNN's own backward,
as at c5b4d8c); the same lines with the default are checked against the same pins.
"""

from pathlib import Path

import pytest
import torch

from smoothguard.cli import main

COMMON = ["--max", "4", "--skip", "13", "--threads", "1", "--seed", "11", "--batch", "400", "--sigma", "0.5"]
RUNS = {
    "certify": ["certify", *COMMON, "--n", "2000"],
    "predict": ["predict", *COMMON, "--n", "500"],
    "certify_radii_cs": ["certify", *COMMON, "--radii", "0.25,0.5,1.0", "--n-max", "3000"],
    "certify_radii_bonferroni": ["certify", *COMMON, "--radii", "0.25,0.5,1.0", "--n-max", "3000",
                                 "--sequential", "bonferroni"],
    "certify_budget": ["certify", *COMMON, "--budget", "2000"],
    "predict_adaptive": ["predict", *COMMON, "--adaptive", "--n-max", "2000"],
    "predict_adaptive_cs": ["predict", *COMMON, "--adaptive", "--n-max", "2000", "--sequential", "cs"],
}

# rows without the time column, as written at commit c5b4d8c
PINNED_ROWS = {
    'certify': [
        ['0', '9', '-1', '0.0', '0'],
        ['260', '0', '0', '0.9931887383478054', '1'],
        ['520', '2', '6', '0.04183035421521402', '0'],
        ['780', '9', '9', '0.543331560385062', '1'],
    ],
    'predict': [
        ['0', '9', '-1', '0'],
        ['260', '0', '0', '1'],
        ['520', '2', '6', '0'],
        ['780', '9', '9', '1'],
    ],
    'certify_radii_cs': [
        ['0', '9', '-1', '0.0', '0', '100'],
        ['260', '0', '0', '0.5', '1', '1800'],
        ['520', '2', '6', '0.0', '0', '900'],
        ['780', '9', '9', '0.5', '1', '900'],
    ],
    'certify_radii_bonferroni': [
        ['0', '9', '-1', '0.0', '0', '200'],
        ['260', '0', '0', '0.5', '1', '3000'],
        ['520', '2', '6', '0.0', '0', '700'],
        ['780', '9', '9', '0.5', '1', '700'],
    ],
    'certify_budget': [
        ['0', '9', '-1', '0.0', '0', '100'],
        ['260', '0', '0', '0.9434536048789941', '1', '1900'],
        ['520', '2', '6', '0.020775997751667108', '0', '1800'],
        ['780', '9', '9', '0.5127074566250772', '1', '1800'],
    ],
    'predict_adaptive': [
        ['0', '9', '9', '1', '1000'],
        ['260', '0', '0', '1', '200'],
        ['520', '2', '6', '0', '300'],
        ['780', '9', '9', '1', '200'],
    ],
    'predict_adaptive_cs': [
        ['0', '9', '-1', '0', '1800'],
        ['260', '0', '0', '1', '100'],
        ['520', '2', '6', '0', '700'],
        ['780', '9', '9', '1', '100'],
    ],
}

# SmoothedClassifier(load_default_model()[0], 10, 0.5) on demo images skip 13, max 4, one thread:
# certify_batch(x, 100, 1000, 0.001, seeds=[1, 2, 3, 4]) and predict_batch(x, 300, 0.001, seeds=[5, 6, 7, 8])
PINNED_COUNTS = {
    'library_counts_selection': [
        [0, 0, 0, 0, 0, 41, 0, 4, 6, 49],
        [98, 0, 0, 0, 0, 0, 2, 0, 0, 0],
        [0, 0, 37, 0, 0, 0, 63, 0, 0, 0],
        [0, 0, 0, 0, 0, 9, 1, 0, 0, 90],
    ],
    'library_counts_estimation': [
        [0, 0, 0, 0, 0, 383, 0, 38, 146, 433],
        [987, 0, 0, 0, 0, 0, 13, 0, 0, 0],
        [3, 18, 389, 7, 18, 0, 545, 0, 20, 0],
        [0, 0, 0, 0, 0, 116, 0, 0, 0, 884],
    ],
    'library_predict_counts': [
        [0, 0, 0, 0, 0, 103, 0, 17, 47, 133],
        [296, 0, 0, 0, 0, 0, 4, 0, 0, 0],
        [0, 3, 133, 1, 5, 0, 146, 0, 12, 0],
        [0, 0, 0, 0, 0, 32, 0, 0, 0, 268],
    ],
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_cli_rows_are_the_ones_pinned_before_the_redesign(run, tmp_path):
    out = tmp_path / f"{run}.tsv"
    assert main([*RUNS[run], "--out", str(out)]) == 0
    rows = [line.split("\t")[:-1] for line in out.read_text().splitlines()[1:]]
    # adaptive rows are written as their images finish, so the file's order may differ from c5b4d8c's
    assert sorted(rows, key=lambda r: int(r[0])) == PINNED_ROWS[run]


def test_library_counts_are_the_ones_pinned_before_the_redesign():
    from smoothguard.data import load_dataset
    from smoothguard.models import load_default_model
    from smoothguard.smoothing import SmoothedClassifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset("demo").subset(skip=13, max_count=4)
        g = SmoothedClassifier(load_default_model()[0], 10, 0.5)
        cert = g.certify_batch(data.images, 100, 1000, 0.001, seeds=[1, 2, 3, 4])
        pred = g.predict_batch(data.images, 300, 0.001, seeds=[5, 6, 7, 8])
    finally:
        torch.set_num_threads(threads)
    assert cert.counts_selection.tolist() == PINNED_COUNTS["library_counts_selection"]
    assert cert.counts_estimation.tolist() == PINNED_COUNTS["library_counts_estimation"]
    assert pred.counts.tolist() == PINNED_COUNTS["library_predict_counts"]


# ---------------------------------------------------------------------------------------
# smoothguard attack / evaluate, every setting explicit (valid at c5b4d8c and now)

ATTACK_COMMON = ["--data", "demo", "--skip", "13", "--max", "6", "--threads", "1", "--seed", "5", "--batch", "3",
                 "--device", "cpu", "--channels-last", "--no-conv-grad"]
ATTACK_RUNS = {
    "pgd_linf": ["--attack", "pgd", "--norm", "linf", "--eps", "0.08", "--steps", "10", "--restarts", "2"],
    "pgd_l2": ["--attack", "pgd", "--norm", "l2", "--eps", "1.5", "--steps", "10", "--step-size", "0.3"],
    "apgd_linf_dlr": ["--attack", "apgd", "--norm", "linf", "--eps", "0.08", "--steps", "10", "--loss", "dlr"],
    "apgd_l2": ["--attack", "apgd", "--norm", "l2", "--eps", "1.5", "--steps", "10", "--restarts", "2"],
    "fgsm": ["--attack", "fgsm", "--eps", "0.15"],
    "fgm": ["--attack", "fgm", "--norm", "l2", "--eps", "1.5"],
    "square_linf": ["--attack", "square", "--norm", "linf", "--eps", "0.15", "--queries", "60"],
    "square_l2": ["--attack", "square", "--norm", "l2", "--eps", "3.0", "--queries", "100"],
    "ddn": ["--attack", "ddn", "--norm", "l2", "--eps", "1.0", "--steps", "10"],
    "ddn_minimal": ["--attack", "ddn", "--norm", "l2", "--eps", "none", "--steps", "10"],
}
ATTACK_ARGV = {name: ["attack", *ATTACK_COMMON, *rest] for name, rest in ATTACK_RUNS.items()}
# the contiguous layout (the other arithmetic of the convolutions) and the C&W margin loss
ATTACK_ARGV["pgd_linf_cw_loss_contiguous"] = [
    "attack", *[a for a in ATTACK_COMMON if a != "--channels-last"], "--no-channels-last",
    "--attack", "pgd", "--norm", "linf", "--eps", "0.08", "--steps", "10", "--loss", "cw"]
# C&W runs 9 binary-search steps x --steps: three images (one broken) keep it short
ATTACK_ARGV["cw_minimal"] = [
    "attack", *[("3" if a == "6" else a) for a in ATTACK_COMMON],
    "--attack", "cw", "--norm", "l2", "--eps", "none", "--steps", "20"]

# --no-curves: c5b4d8c drew the curves unless told not to; now they are opt-in and the flag
# is accepted (deprecated, no effect), so the same line skips them at both commits
EVALUATE_TAIL = ["--no-curves", "--loss-restarts", "0", "--grid-examples", "0", "--no-plots"]
EVALUATE_ARGV = {
    "evaluate_linf": ["evaluate", *ATTACK_COMMON, "--norm", "linf", "--eps", "0.07",
                      "--attacks", "fgsm,pgd,pgd-cw,apgd-ce,apgd-dlr,apgd-t", "--steps", "5", "--restarts", "2",
                      "--apgd-steps", "10", "--apgd-targets", "2", *EVALUATE_TAIL],
    "evaluate_l2": ["evaluate", *ATTACK_COMMON, "--norm", "l2", "--eps", "1.5", "--attacks", "fgsm,pgd,apgd-ce",
                    "--steps", "5", "--restarts", "1", "--apgd-steps", "10", *EVALUATE_TAIL],
    "evaluate_square": ["evaluate", *ATTACK_COMMON, "--norm", "linf", "--eps", "0.15", "--attacks", "square",
                        "--queries", "60", *EVALUATE_TAIL],
}

# attack rows (idx label clean_pred adv_pred norm success) without the time column, as
# written at c5b4d8c (square_*: with p_init 0.8, see the module docstring)
PINNED_ATTACK_ROWS = {
    'pgd_linf': [
        ['0', '9', '9', '7', '0.07999999821186066', '1'],
        ['260', '0', '0', '0', '0.07999999821186066', '0'],
        ['520', '2', '2', '6', '0.07999999821186066', '1'],
        ['780', '9', '9', '5', '0.07999999821186066', '1'],
        ['1040', '7', '7', '7', '0.07999999821186066', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'pgd_l2': [
        ['0', '9', '9', '7', '1.49617600440979', '1'],
        ['260', '0', '0', '0', '1.49338960647583', '0'],
        ['520', '2', '2', '6', '1.497985601425171', '1'],
        ['780', '9', '9', '5', '1.4988137483596802', '1'],
        ['1040', '7', '7', '5', '1.4932371377944946', '1'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'pgd_linf_cw_loss_contiguous': [
        ['0', '9', '9', '7', '0.07999999821186066', '1'],
        ['260', '0', '0', '0', '0.07999999821186066', '0'],
        ['520', '2', '2', '6', '0.07999999821186066', '1'],
        ['780', '9', '9', '5', '0.07999999821186066', '1'],
        ['1040', '7', '7', '7', '0.07999999821186066', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'apgd_linf_dlr': [
        ['0', '9', '9', '7', '0.07999999821186066', '1'],
        ['260', '0', '0', '0', '0.07999999821186066', '0'],
        ['520', '2', '2', '6', '0.07999999821186066', '1'],
        ['780', '9', '9', '5', '0.07999999821186066', '1'],
        ['1040', '7', '7', '7', '0.07999999821186066', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'apgd_l2': [
        ['0', '9', '9', '7', '1.4038740396499634', '1'],
        ['260', '0', '0', '6', '1.498064398765564', '1'],
        ['520', '2', '2', '6', '1.4735060930252075', '1'],
        ['780', '9', '9', '5', '1.499064564704895', '1'],
        ['1040', '7', '7', '5', '1.4850388765335083', '1'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'fgsm': [
        ['0', '9', '9', '7', '0.1499999761581421', '1'],
        ['260', '0', '0', '6', '0.1499999761581421', '1'],
        ['520', '2', '2', '6', '0.1499999761581421', '1'],
        ['780', '9', '9', '5', '0.1499999761581421', '1'],
        ['1040', '7', '7', '5', '0.1499999761581421', '1'],
        ['1300', '8', '5', '5', '0.1499999761581421', '1'],
    ],
    'fgm': [
        ['0', '9', '9', '7', '1.3532664775848389', '1'],
        ['260', '0', '0', '0', '1.448961615562439', '0'],
        ['520', '2', '2', '6', '1.4595768451690674', '1'],
        ['780', '9', '9', '9', '1.4733940362930298', '0'],
        ['1040', '7', '7', '7', '1.407094120979309', '0'],
        ['1300', '8', '5', '5', '1.2226542234420776', '1'],
    ],
    'square_linf': [
        ['0', '9', '9', '9', '0.1499999761581421', '0'],
        ['260', '0', '0', '0', '0.1499999761581421', '0'],
        ['520', '2', '2', '6', '0.1499999761581421', '1'],
        ['780', '9', '9', '9', '0.1499999761581421', '0'],
        ['1040', '7', '7', '7', '0.1499999761581421', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'square_l2': [
        ['0', '9', '9', '5', '2.9847586154937744', '1'],
        ['260', '0', '0', '0', '2.990783214569092', '0'],
        ['520', '2', '2', '6', '3.0', '1'],
        ['780', '9', '9', '9', '3.0', '0'],
        ['1040', '7', '7', '7', '2.998568058013916', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'cw_minimal': [
        ['0', '9', '9', '9', '0.0', '0'],
        ['260', '0', '0', '0', '0.0', '0'],
        ['520', '2', '2', '6', '0.962039053440094', '1'],
    ],
    'ddn': [
        ['0', '9', '9', '7', '0.8387123346328735', '1'],
        ['260', '0', '0', '0', '0.9995651841163635', '0'],
        ['520', '2', '2', '6', '0.8954362869262695', '1'],
        ['780', '9', '9', '9', '0.9999731779098511', '0'],
        ['1040', '7', '7', '7', '0.9994986653327942', '0'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
    'ddn_minimal': [
        ['0', '9', '9', '7', '0.8451693654060364', '1'],
        ['260', '0', '0', '6', '1.4030133485794067', '1'],
        ['520', '2', '2', '6', '0.8932726383209229', '1'],
        ['780', '9', '9', '5', '1.3333793878555298', '1'],
        ['1040', '7', '7', '5', '1.396559715270996', '1'],
        ['1300', '8', '5', '5', '0.0', '1'],
    ],
}

# evaluate at c5b4d8c: clean and worst-case accuracy, the cascade rows (key, label, kind,
# attacked, fooled, accuracy, alone_accuracy, mean_norm, queries: table.json without seconds)
# and per_example.tsv (evaluate_square: with p_init 0.8, see the module docstring)
PINNED_EVALUATIONS = {
    'evaluate_linf': {
        'clean_accuracy': 0.8333333134651184, 'robust_accuracy': 0.5,
        'rows': [
            ['fgsm', 'FGSM', 'white-box', 5, 1, 0.6666666865348816, None, 0.06999999284744263, None],
            ['pgd', 'PGD-5, 2 restarts (CE)', 'white-box', 4, 1, 0.5, None, 0.06999999284744263, None],
            ['pgd-cw', 'PGD-5 (CW loss)', 'white-box', 3, 0, 0.5, None, None, None],
            ['apgd-ce', 'APGD-CE (10)', 'white-box', 3, 0, 0.5, None, None, None],
            ['apgd-dlr', 'APGD-DLR (10)', 'white-box', 3, 0, 0.5, None, None, None],
            ['apgd-t', 'APGD-T (10, 2 targets)', 'white-box', 3, 0, 0.5, None, None, None],
        ],
        'per_example': [
            ['0', '9', '9', '7', '0.06999999284744263', 'pgd', '0'],
            ['260', '0', '0', '0', '0.0', '-', '1'],
            ['520', '2', '2', '6', '0.06999999284744263', 'fgsm', '0'],
            ['780', '9', '9', '9', '0.0', '-', '1'],
            ['1040', '7', '7', '7', '0.0', '-', '1'],
            ['1300', '8', '5', '5', '0.0', 'clean', '0'],
        ],
    },
    'evaluate_l2': {
        'clean_accuracy': 0.8333333134651184, 'robust_accuracy': 0.0,
        'rows': [
            ['fgm', 'FGM (l2 step)', 'white-box', 5, 2, 0.5, None, 1.4064216613769531, None],
            ['pgd', 'PGD-5 (CE)', 'white-box', 3, 3, 0.0, None, 1.486155390739441, None],
            ['apgd-ce', 'APGD-CE (10)', 'white-box', 0, 0, 0.0, None, None, None],
        ],
        'per_example': [
            ['0', '9', '9', '7', '1.3532664775848389', 'fgm', '0'],
            ['260', '0', '0', '6', '1.4848034381866455', 'pgd', '0'],
            ['520', '2', '2', '6', '1.4595768451690674', 'fgm', '0'],
            ['780', '9', '9', '5', '1.496406078338623', 'pgd', '0'],
            ['1040', '7', '7', '5', '1.4772565364837646', 'pgd', '0'],
            ['1300', '8', '5', '5', '0.0', 'clean', '0'],
        ],
    },
    'evaluate_square': {
        'clean_accuracy': 0.8333333134651184, 'robust_accuracy': 0.6666666865348816,
        'rows': [
            ['square', 'Square (60 queries)', 'black-box', 5, 1, 0.6666666865348816, None, 0.1499999761581421, 52.20000076293945],
        ],
        'per_example': [
            ['0', '9', '9', '9', '0.0', '-', '1'],
            ['260', '0', '0', '0', '0.0', '-', '1'],
            ['520', '2', '2', '6', '0.1499999761581421', 'square', '0'],
            ['780', '9', '9', '9', '0.0', '-', '1'],
            ['1040', '7', '7', '7', '0.0', '-', '1'],
            ['1300', '8', '5', '5', '0.0', 'clean', '0'],
        ],
    },
}

CASCADE_FIELDS = ["key", "label", "kind", "attacked", "fooled", "accuracy", "alone_accuracy", "mean_norm", "queries"]


def _close_rows(got, pinned, norm_columns):
    """Rows equal but for the norm columns, which agree within 1e-6 relative."""
    assert len(got) == len(pinned)
    for g, p in zip(got, pinned):
        assert len(g) == len(p)
        for k, (a, b) in enumerate(zip(g, p)):
            if k in norm_columns and a is not None and b is not None:
                assert float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-9), (g, p)
            else:
                assert a == b, (g, p)


def _check_attack(argv, run, tmp_path):
    out = tmp_path / f"{run}.tsv"
    assert main([*argv, "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "clean_pred", "adv_pred", "norm", "success", "time"]
    rows = [line.split("\t")[:-1] for line in lines[1:]]
    _close_rows(sorted(rows, key=lambda r: int(r[0])), PINNED_ATTACK_ROWS[run], norm_columns={4})


def _check_evaluate(argv, run, tmp_path, conv_grad):
    import json

    assert main([*argv, "--out-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["settings"]["speed"]["conv_grad"] is conv_grad
    ev, pinned = table["evaluation"], PINNED_EVALUATIONS[run]
    assert (ev["clean_accuracy"], ev["robust_accuracy"]) == (pinned["clean_accuracy"], pinned["robust_accuracy"])
    _close_rows([[row[f] for f in CASCADE_FIELDS] for row in ev["rows"]], pinned["rows"],
                norm_columns={CASCADE_FIELDS.index("mean_norm")})
    lines = (tmp_path / "per_example.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "clean_pred", "adv_pred", "norm", "fooled_by", "robust"]
    _close_rows([line.split("\t") for line in lines[1:]], pinned["per_example"], norm_columns={4})


def _default_conv_grad(argv):
    assert "--no-conv-grad" in argv
    return [a for a in argv if a != "--no-conv-grad"]


@pytest.mark.parametrize("run", sorted(ATTACK_ARGV))
def test_attack_rows_are_the_ones_pinned_before_the_redesign(run, tmp_path):
    _check_attack(ATTACK_ARGV[run], run, tmp_path)


@pytest.mark.parametrize("run", sorted(EVALUATE_ARGV))
def test_evaluate_results_are_the_ones_pinned_before_the_redesign(run, tmp_path):
    _check_evaluate(EVALUATE_ARGV[run], run, tmp_path, conv_grad=False)


@pytest.mark.parametrize("run", sorted(ATTACK_ARGV))
def test_attack_rows_with_the_default_conv_grad_are_the_pinned_ones_up_to_rounding(run, tmp_path):
    _check_attack(_default_conv_grad(ATTACK_ARGV[run]), run, tmp_path)


@pytest.mark.parametrize("run", sorted(EVALUATE_ARGV))
def test_evaluate_results_with_the_default_conv_grad_are_the_pinned_ones_up_to_rounding(run, tmp_path):
    _check_evaluate(_default_conv_grad(EVALUATE_ARGV[run]), run, tmp_path, conv_grad=True)
