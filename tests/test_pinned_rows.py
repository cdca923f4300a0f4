"""Gaussian certify/predict rows pinned before the sampler redesign (issue 19 item 3).

The data below was produced at commit c5b4d8cbb04617f5ffcf768822f3f2ccc1297ba6 (before
smoothing/sampler.py and smoothguard/runtime.py existed) by the CLI and the library with the
embedded LeNet, fixed seeds and sigma 0.5 (so that the four images include an abstention, a
wrong class and radii between the grid points). Every later version must reproduce it bit
for bit: the redesign moves code, it does not change a single count. Only the time column
is left out.
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
