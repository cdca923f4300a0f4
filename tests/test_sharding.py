"""torchrun sharding of certify: the rows of a single-process run, resumable per rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothguard.cli import main


# --standalone: torchrun's rendezvous store binds port 0 itself and the ranks connect to
# that store, so no port is chosen here and released for torchrun to grab (which raced)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
KILL_AFTER_ROWS = Path(__file__).with_name("kill_after_rows.py")


def _torchrun(args, out, command="certify", launcher=("-m", "smoothguard")):
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [*TORCHRUN, *launcher, command, *args, "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _rows(path):
    return [line.split("\t")[:-1] for line in path.read_text().splitlines()[1:]]  # without time


ARGS = ["--max-images", "10", "--skip", "7", "--n-samples", "3000", "--seed", "11", "--threads", "1", "--batch", "400"]


def test_torchrun_two_ranks_give_the_rows_of_one_process(tmp_path):
    single = tmp_path / "single.tsv"
    assert main(["certify", *ARGS, "--out", str(single)]) == 0
    out = tmp_path / "sharded.tsv"
    proc = _torchrun(ARGS, out)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    assert _rows(out) == _rows(single)
    assert [int(r[0]) for r in _rows(out)] == sorted(int(r[0]) for r in _rows(out))
    assert (tmp_path / "sharded.tsv.part0-of-2").exists() and (tmp_path / "sharded.tsv.part1-of-2").exists()


def test_killing_a_rank_and_rerunning_resumes_without_duplicates(tmp_path):
    args = [*ARGS[:4], "--n-samples", "20000", *ARGS[6:]]
    single = tmp_path / "single.tsv"
    assert main(["certify", *args, "--out", str(single)]) == 0
    out = tmp_path / "sharded.tsv"
    # rank 1 SIGKILLs itself right after its first row; torchrun then stops rank 0
    proc = _torchrun(args, out, launcher=(str(KILL_AFTER_ROWS), "1", "1", "--"))
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, log
    part1 = tmp_path / "sharded.tsv.part1-of-2"
    assert len(_rows(part1)) == 1
    assert not out.exists() or len(_rows(out)) < len(_rows(single))
    proc = _torchrun(args, out)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    rows = _rows(out)
    assert rows == _rows(single)
    assert len({r[0] for r in rows}) == len(rows)


def test_torchrun_attack_gives_the_rows_of_one_process_with_batch_1(tmp_path):
    # with --batch 1 each image is attacked alone, so its random starts depend only on --seed
    args = ["--max-images", "6", "--skip", "50", "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--restarts",
            "2", "--seed", "3", "--threads", "1", "--batch", "1"]
    single = tmp_path / "single.tsv"
    assert main(["attack", *args, "--out", str(single)]) == 0
    out = tmp_path / "sharded.tsv"
    proc = _torchrun(args, out, "attack")
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    assert _rows(out) == _rows(single) and len(_rows(out)) == 6
    assert "robust accuracy" in log  # rank 0 prints the summary of the merged file


def test_torchrun_training_averages_gradients_like_one_process(tmp_path):
    # standard objective (no noise): 2 ranks under DistributedDataParallel must follow the
    # single-process updates up to float rounding, including uneven shares (67 = 34 + 33)
    # and a last minibatch of one example, where rank 1 joins the step with weight 0
    args = ["--data", "fashion-mnist", "--arch", "lenet", "--objective", "standard", "--epochs", "2", "--batch", "67",
            "--max-train", "202", "--max-test", "50", "--lr", "0.05", "--seed", "5", "--threads", "1"]
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [*TORCHRUN, "-m", "smoothguard", "train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import torch

    from smoothguard.models import get_model, load_checkpoint
    from smoothguard.utils import derive_seed

    single, meta_s = load_checkpoint(tmp_path / "single" / "model.pt")
    ddp, meta_d = load_checkpoint(tmp_path / "ddp" / "model.pt")
    diffs = [float((a - b).abs().max()) for a, b in zip(single.state_dict().values(), ddp.state_dict().values())]
    assert max(diffs) < 1e-4, diffs
    assert meta_d["epochs_trained"] == 2 and len((tmp_path / "ddp" / "log.tsv").read_text().splitlines()) == 3
    # the ranks saw the same number of examples as the single process
    assert abs(meta_d["metrics"]["train_acc"] - meta_s["metrics"]["train_acc"]) < 0.02
    assert meta_d["world_size"] == 2 and meta_s["world_size"] == 1
    torch.manual_seed(derive_seed(5, "init"))  # the CLI's initial weights for --seed 5
    init = get_model("lenet", 10, (1, 28, 28))
    assert max(float((a - b).abs().max()) for a, b in zip(single.state_dict().values(),
                                                          init.state_dict().values())) > 1e-2  # it did train


@pytest.mark.parametrize("objective", ["trades", "smoothadv"])
def test_torchrun_training_runs_multi_pass_objectives_under_ddp(tmp_path, objective):
    # TRADES (clean + adversarial forward, an attack inside the step) and SmoothAdv (an
    # attack on m noisy copies) call the model many times per step; DDP must see one
    # forward per backward (the Trainer wraps the whole objective), or the second step
    # fails with DDP's "expected to have finished reduction" error
    args = ["--data", "fashion-mnist", "--arch", "lenet", "--objective", objective, "--epochs", "2", "--batch", "32",
            "--max-train", "96", "--max-test", "20", "--attack-steps", "2", "--seed", "3", "--threads", "1"]
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [*TORCHRUN, "-m", "smoothguard", "train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import math

    from smoothguard.models import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert meta["world_size"] == 2 and meta["epochs_trained"] == 2 and meta["objective"] == objective
    assert math.isfinite(meta["metrics"]["train_loss"])
    assert all(bool(t.isfinite().all()) for t in model.state_dict().values())


def test_sharded_run_without_out_is_refused():
    import argparse

    from smoothguard.cli._smoothing_run import run_rows
    from smoothguard.distributed import World

    ns = argparse.Namespace(world=World(0, 2, 0), out=None, overwrite=False)
    with pytest.raises(ValueError, match="--out is required"):
        run_rows(ns, None, ["idx", "correct"], "certify", {}, [], 1, None)
