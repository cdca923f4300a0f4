"""``smoothguard run``: dependency order, skipping finished steps, rerunning changed ones,
resuming interrupted ones, and validating the whole experiment file before any work."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smoothguard.cli import main
from smoothguard.cli.run import load_experiment
from smoothguard.runner import ExperimentError

TINY = """
[experiment]
name = "tiny"

[defaults]
threads = 1
seed = 0

[train.tiny]
data = "fashion-mnist"
root = "{root}"
epochs = 1
batch = 32
noise_sd = 0.25

[certify.tiny]
model = "@train.tiny"
sigma = 0.25
n0 = 20
n = {n}
max = 4

[attack.tiny]
model = "@train.tiny"
attack = "pgd"
norm = "l2"
eps = 0.5
steps = 3
max = 4

[analyze.all]
files = ["@certify.*"]
"""


def _write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _run_summary(run_dir):
    return {s["step"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["steps"]}


def _manifest(run_dir, step):
    return json.loads((run_dir / step.replace(".", "/", 1) / "manifest.json").read_text())


def _rows(path):
    lines = Path(path).read_text().splitlines()
    return [ln.split("\t") for ln in lines[1:]]


def test_steps_run_in_dependency_order_and_references_resolve(tiny_idx_root, tmp_path):
    # the analyze step is written first but needs the certify step, which needs the train step
    text = TINY.format(root=tiny_idx_root, n=100)
    text = text.replace("[analyze.all]\nfiles = [\"@certify.*\"]\n", "")
    text = "[analyze.all]\nfiles = [\"@certify.*\"]\n" + text.replace("[experiment]", "[experiment]", 1)
    exp = load_experiment(_write(tmp_path, text), tmp_path / "run")
    order = [s.id for s in exp.steps]
    assert order.index("train.tiny") < order.index("certify.tiny") < order.index("analyze.all")
    argv = exp.argv(exp.step("certify.tiny"))
    assert argv[argv.index("--model") + 1] == str(tmp_path / "run" / "train" / "tiny" / "model.pt")
    assert argv[argv.index("--out") + 1] == str(tmp_path / "run" / "certify" / "tiny" / "certify.tsv")
    assert argv[argv.index("--n") + 1] == "100" and argv[argv.index("--n0") + 1] == "20"
    analyze = exp.argv(exp.step("analyze.all"))
    assert analyze[-1] == str(tmp_path / "run" / "certify" / "tiny" / "certify.tsv")
    assert not (tmp_path / "run").exists()  # loading writes nothing


def test_skips_completed_steps_and_reruns_a_step_whose_settings_changed(tiny_idx_root, tmp_path):
    run_dir = tmp_path / "run"
    exp = _write(tmp_path, TINY.format(root=tiny_idx_root, n=100))
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    first = _run_summary(run_dir)
    assert set(first.values()) == {"ran"} and len(first) == 4
    for step in first:
        m = _manifest(run_dir, step)
        assert m["status"] == "complete" and m["outputs"], step
    model_mtime = (run_dir / "train/tiny/model.pt").stat().st_mtime_ns
    cert_before = _rows(run_dir / "certify/tiny/certify.tsv")

    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    assert set(_run_summary(run_dir).values()) == {"skipped"}
    assert (run_dir / "train/tiny/model.pt").stat().st_mtime_ns == model_mtime
    assert _rows(run_dir / "certify/tiny/certify.tsv") == cert_before  # not even the time column changed

    # n changes: certify reruns from scratch (a changed setting is not a resume), analyze reads it again,
    # train and attack are untouched
    _write(tmp_path, TINY.format(root=tiny_idx_root, n=150))
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    third = _run_summary(run_dir)
    assert third == {"train.tiny": "skipped", "certify.tiny": "ran", "attack.tiny": "skipped",
                     "analyze.all": "ran"}
    side = json.loads((run_dir / "certify/tiny/certify.tsv.json").read_text())
    assert side["settings"]["n"] == 150
    assert len(_rows(run_dir / "certify/tiny/certify.tsv")) == 4
    m = _manifest(run_dir, "certify.tiny")
    assert m["attempts"][-1]["reason"] == "settings changed" and len(m["attempts"]) == 1

    # a missing output makes a complete step run again
    (run_dir / "attack/tiny/attack.tsv").unlink()
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    assert _run_summary(run_dir)["attack.tiny"] == "ran"
    assert len(_rows(run_dir / "attack/tiny/attack.tsv")) == 4


def test_an_interrupted_step_resumes_without_duplicate_rows(tiny_idx_root, tmp_path):
    run_dir = tmp_path / "run"
    exp = _write(tmp_path, TINY.format(root=tiny_idx_root, n=100))
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    tsv = run_dir / "certify/tiny/certify.tsv"
    full = _rows(tsv)
    # what a kill mid-certify leaves: two complete rows, a row cut in the middle, status "running"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:3]) + lines[3][:5])
    m = _manifest(run_dir, "certify.tiny")
    m["status"] = "running"
    (run_dir / "certify/tiny/manifest.json").write_text(json.dumps(m))

    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    summary = _run_summary(run_dir)
    assert summary["certify.tiny"] == "resumed" and summary["train.tiny"] == "skipped"
    resumed = _rows(tsv)
    assert [r[:-1] for r in resumed] == [r[:-1] for r in full]  # same rows (time aside), none twice
    assert resumed[:2] == full[:2]  # the complete rows were kept, not recomputed
    m = _manifest(run_dir, "certify.tiny")
    assert m["status"] == "complete" and [a["action"] for a in m["attempts"]] == ["run", "resume"]


def test_an_interrupted_train_step_resumes_from_its_checkpoint(tiny_idx_root, tmp_path):
    run_dir = tmp_path / "run"
    text = TINY.format(root=tiny_idx_root, n=100).split("[certify.tiny]")[0]
    exp = _write(tmp_path, text)
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    (run_dir / "train/tiny/model.pt").unlink()  # killed after the last checkpoint, before model.pt
    m = _manifest(run_dir, "train.tiny")
    m["status"] = "interrupted"
    (run_dir / "train/tiny/manifest.json").write_text(json.dumps(m))
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    m = _manifest(run_dir, "train.tiny")
    assert "--resume" in m["argv"] and m["status"] == "complete"
    assert (run_dir / "train/tiny/model.pt").exists()


def test_a_killed_run_resumes_mid_certify(tmp_path):
    run_dir = tmp_path / "run"
    exp = _write(tmp_path, "[certify.slow]\nthreads = 1\nsigma = 0.25\nn = 5000\nbatch = 100\nmax = 4\n")
    env = dict(os.environ, SMOOTHGUARD_NO_PROGRESS="1")
    # the run SIGKILLs itself right after the certify step's 2nd row (of 4), whatever the load
    killer = Path(__file__).with_name("kill_after_rows.py")
    proc = subprocess.run([sys.executable, str(killer), "2", "--", "run", str(exp), "--run-dir", str(run_dir)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    tsv = run_dir / "certify/slow/certify.tsv"
    done = _rows(tsv)
    assert len(done) == 2, "the run was not interrupted after its 2nd row"
    assert _manifest(run_dir, "certify.slow")["status"] == "running"

    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    assert _run_summary(run_dir) == {"certify.slow": "resumed"}
    rows = _rows(tsv)
    assert len(rows) == 4 and len({r[0] for r in rows}) == 4
    assert rows[:len(done)] == done


BAD = [
    ("[trian.x]\nepochs = 1\n", ["[trian]", "did you mean 'train'", "allowed:", "certify"]),
    ("[certify.x]\nsigmaa = 0.5\n", ["[certify.x]", "'sigmaa'", "did you mean 'sigma'", "allowed for certify"]),
    ("[certify.x]\nprecision = \"fp8\"\n", ["[certify.x] precision", "fp8", "fp32", "bf16"]),
    ("[certify.x]\nsigma = -1.0\n", ["[certify.x]", "sigma", "positive"]),
    ("[certify.x]\nn = \"many\"\n", ["[certify.x] n", "invalid int value"]),
    ("[certify.x]\nmodel = \"@train.nope\"\n", ["[certify.x] model", "no step 'train.nope'", "steps: predict.good, certify.x"]),
    ("[attack.x]\nnorm = \"l3\"\n", ["[attack.x]", "norm", "linf, l2"]),
    ("[certify.x]\nout = \"elsewhere.tsv\"\n", ["[certify.x] out", "set by the runner"]),
    ("[analyze.a]\nfiles = [\"@analyze.b\"]\n[analyze.b]\nfiles = [\"@analyze.a\"]\n",
     ["cycle", "analyze.a -> analyze.b -> analyze.a"]),
    ("[defaults]\nthreds = 1\n[certify.x]\nn = 10\n", ["[defaults]", "'threds'", "did you mean 'threads'"]),
    ("[train.x]\nepochs = 0\n", ["[train.x]", "epochs must be >= 1"]),
    ("[certify.x]\nmodel = \"missing/model.pt\"\n", ["[certify.x] model", "no such file"]),
    ("[certify.x]\njit = \"yes\"\n", ["[certify.x] jit", "true or false"]),
    ("[experiment]\nname = \"x\"\n", ["no steps"]),
    ("[certify.x\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[f"{i}-{b[1][0]}" for i, b in enumerate(BAD)])
def test_a_bad_experiment_file_fails_before_any_work(tmp_path, capsys, text, needles):
    # a good step first (where the file can hold one): nothing at all may run when a later step is wrong
    alone = text.startswith(("[certify.x\n", "[experiment]"))
    exp = _write(tmp_path, text if alone else "[predict.good]\nn = 10\nmax = 1\n" + text)
    run_dir = tmp_path / "run"
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not run_dir.exists()


def test_load_experiment_error_type_and_dry_run_writes_nothing(tmp_path, capsys):
    exp = _write(tmp_path, "[certify.x]\nn = 10\nmax = 1\n[report]\n")
    with pytest.raises(ExperimentError):
        load_experiment(_write(tmp_path, "[certify.x]\nbogus = 1\n", "bad.toml"))
    assert main(["run", str(exp), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "certify.x: would run (new)" in out and "smoothguard report" in out
    assert not (tmp_path / "run").exists()


def test_run_threads_apply_to_steps_that_do_not_set_them(tmp_path, capsys):
    exp = _write(tmp_path, "[certify.a]\nn = 10\nmax = 1\n[certify.b]\nn = 10\nmax = 1\nthreads = 2\n"
                           "[analyze.c]\nfiles = [\"@certify.*\"]\n")
    assert main(["run", str(exp), "--run-dir", str(tmp_path / "run"), "--threads", "1", "--dry-run"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("smoothguard")]
    assert "--threads 1" in lines[0] and "--threads 2" in lines[1] and "--threads 1" not in lines[1]
    # analyze takes no --threads (it uses no torch); its options go before its positional files,
    # never after the "--" separator
    assert "--threads" not in lines[2]
    assert lines[2].index("--out ") < lines[2].index(" -- ")


def test_python_310_without_tomli_gets_a_clear_message(tmp_path, monkeypatch):
    import sys as _sys

    from smoothguard.runner import load_toml

    monkeypatch.setitem(_sys.modules, "tomllib", None)  # as on Python 3.10
    monkeypatch.setitem(_sys.modules, "tomli", None)  # and tomli not installed
    with pytest.raises(ExperimentError, match="pip install tomli"):
        load_toml(_write(tmp_path, "[certify.a]\n"))


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("experiments/*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_file_validates(path, tmp_path):
    from smoothguard.cli.run import load_experiment

    exp = load_experiment(path, run_dir=tmp_path / "run")
    assert exp is not None
    assert not (tmp_path / "run").exists()  # validation writes nothing
