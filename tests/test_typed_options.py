"""Thin commands (issue 19): ``attack``, ``verify``, ``train``, ``certify``, ``predict``,
``evaluate`` and ``smooth-eval`` run from typed option
objects exactly as from their command lines, and every ``--batch`` left out takes the
default of the device used (one table per concept in smoothguard.defaults), recorded in
the sidecar."""

from __future__ import annotations

import json

import pytest
import torch

from smoothguard import defaults as D
from smoothguard.cli import build_parser, main
from smoothguard.cli.common import DataSelection

torch.set_num_threads(1)


def _rows(path):
    """The rows of a result file without their time column (the last)."""
    return [line.split("\t")[:-1] for line in path.read_text().splitlines()]


def _settings(path):
    return json.loads((path.parent / (path.name + ".json")).read_text())["settings"]


def test_batch_tables_resolve_by_device_type():
    assert D.batch_for(D.SAMPLING_BATCH, "cpu") == 400  # the pinned certify/predict rows ran at 400
    assert D.batch_for(D.SAMPLING_BATCH, torch.device("cuda", 1)) == D.SAMPLING_BATCH["cuda"] == 10_000
    assert D.batch_for(D.SAMPLING_BATCH, "mps") == 400  # a device type without an entry: the CPU value
    assert D.batch_for(D.ATTACK_BATCH, torch.device("cpu")) == 500  # a resume key of attack files
    assert D.batch_for(D.SMOOTH_EVAL_BATCH, "cpu") == 1000
    assert D.describe_batch(D.SAMPLING_BATCH) == "400 on CPU, 10,000 on CUDA"
    assert D.describe_batch({"cpu": 500, "cuda": 500}) == "500 on CPU and CUDA"


def test_every_batch_help_states_the_default_it_resolves_to():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    checked = []
    for name, sub in commands.items():
        for action in sub._actions:
            if "--batch" not in action.option_strings or action.default is not None:
                continue
            checked.append(name)
            text = " ".join(action.help.split())
            assert "default: " in text, (name, text)
            if name in ("certify", "predict", "demo"):
                assert "400 on CPU, 10,000 on CUDA" in text, (name, text)
            if name in ("attack", "evaluate"):
                assert "500 on CPU and CUDA" in text, (name, text)
            if name == "verify":
                assert "16 for crown" in text and "200 for ibp" in text, text
    assert {"certify", "predict", "demo", "attack", "evaluate", "smooth-eval", "verify"} <= set(checked)


def test_attack_runs_from_typed_options_as_from_its_command_line(tmp_path):
    from smoothguard.cli.attack import AttackOptions, attack

    cli_out, typed_out = tmp_path / "cli.tsv", tmp_path / "typed.tsv"
    assert main(["attack", "--attack", "pgd", "--steps", "3", "--max", "5", "--skip", "7", "--threads", "1",
                 "--device", "cpu", "--out", str(cli_out)]) == 0
    opts = AttackOptions(attack="pgd", steps=3, data=DataSelection(skip=7, max=5), out=str(typed_out),
                         device=torch.device("cpu"))
    assert attack(opts) == 0
    assert _rows(typed_out) == _rows(cli_out) and len(_rows(cli_out)) == 6  # header + 5 rows
    cli, typed = _settings(cli_out), _settings(typed_out)
    assert cli["batch"] == typed["batch"] == 500  # --batch left out: ATTACK_BATCH["cpu"], recorded
    assert {k: v for k, v in cli.items() if k != "command"} == {k: v for k, v in typed.items() if k != "command"}
    # the default is the value an explicit --batch 500 resumes (a resume key): nothing is recomputed
    assert main(["attack", "--attack", "pgd", "--steps", "3", "--max", "5", "--skip", "7", "--threads", "1",
                 "--device", "cpu", "--batch", "500", "--out", str(cli_out)]) == 0
    assert _rows(cli_out)[1:] == _rows(typed_out)[1:]


def test_verify_runs_from_typed_options_and_its_batch_follows_the_method(tmp_path):
    from smoothguard.cli import verify as V

    cli_out, typed_out = tmp_path / "cli.tsv", tmp_path / "typed.tsv"
    assert main(["verify", "--method", "ibp", "--eps", "0.01", "--max", "4", "--skip", "9", "--threads", "1",
                 "--out", str(cli_out)]) == 0
    opts = V.VerifyOptions(method="ibp", eps=0.01, batch=D.VERIFY_BATCH["ibp"], data=DataSelection(skip=9, max=4),
                           out=str(typed_out), device=torch.device("cpu"))
    assert V.verify(opts) == 0
    assert _rows(typed_out) == _rows(cli_out) and len(_rows(cli_out)) == 5
    assert _settings(cli_out)["batch"] == 200
    parser = build_parser()
    for method, batch in (("crown", 16), ("crown-ibp", 200), ("ibp", 200)):
        assert V.validate(parser.parse_args(["verify", "--method", method])) == (0.1, batch)
    assert V.validate(parser.parse_args(["verify", "--method", "crown", "--batch", "3"])) == (0.1, 3)


def test_train_runs_from_typed_options_as_from_its_command_line(tiny_idx_root, tmp_path):
    from smoothguard.cli.train import TrainOptions, train
    from smoothguard.models import load_checkpoint
    from smoothguard.training import TrainConfig

    assert main(["train", "--data", "mnist", "--root", str(tiny_idx_root), "--objective", "standard",
                 "--epochs", "1", "--batch", "16", "--max-test", "10", "--threads", "1", "--device", "cpu",
                 "--out-dir", str(tmp_path / "cli")]) == 0
    opts = TrainOptions(out_dir=tmp_path / "typed", objective="standard", config=TrainConfig(epochs=1, batch_size=16),
                        data=DataSelection("mnist", root=str(tiny_idx_root), split="train"), max_test=10,
                        device=torch.device("cpu"))
    assert train(opts) == 0
    cli_model, cli_meta = load_checkpoint(tmp_path / "cli" / "model.pt")
    typed_model, typed_meta = load_checkpoint(tmp_path / "typed" / "model.pt")
    for (name, a), (_, b) in zip(cli_model.state_dict().items(), typed_model.state_dict().items()):
        assert torch.equal(a, b), name  # same seeds, same minibatches: the same weights
    assert cli_meta["train_size"] == typed_meta["train_size"] == 60


def test_certify_without_batch_runs_at_the_cpu_default_and_writes_the_same_rows(tmp_path):
    default, explicit = tmp_path / "default.tsv", tmp_path / "explicit.tsv"
    argv = ["certify", "--max", "2", "--skip", "11", "--n0", "100", "--n", "300", "--threads", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(default)]) == 0
    assert main([*argv, "--batch", "400", "--out", str(explicit)]) == 0
    assert _rows(default) == _rows(explicit)
    settings = _settings(default)
    assert settings["batch"] == 400 and settings["noise_block"] == 100


def test_smooth_eval_and_evaluate_record_the_batch_they_resolved(tmp_path):
    assert main(["smooth-eval", "--max", "2", "--sigmas", "0.25", "--m", "2", "--methods", "hard", "--attacks", "none",
                 "--threads", "1", "--device", "cpu", "--no-plots", "--out-dir", str(tmp_path / "se")]) == 0
    assert json.loads((tmp_path / "se" / "table.json").read_text())["settings"]["batch"] == 1000
    assert main(["evaluate", "--max", "2", "--attacks", "fgsm", "--threads", "1", "--device", "cpu", "--no-plots",
                 "--grid-examples", "0", "--out-dir", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "table.json").read_text())["settings"]["batch"] == 500


def _smoothing(out, **data):
    from smoothguard.cli._smoothing_run import SmoothingOptions

    return SmoothingOptions(data=DataSelection(**data), out=str(out), device=torch.device("cpu"), command="certify")


def test_certify_runs_from_typed_options_as_from_its_command_line_in_each_mode(tmp_path):
    from smoothguard.cli.certify import CertifyOptions, certify

    base = ["certify", "--max", "3", "--skip", "13", "--n0", "100", "--threads", "1", "--device", "cpu"]
    modes = {
        "fixed": (["--n", "300"], dict(n=300)),
        "adaptive": (["--radii", "0.5,0.25", "--n-max", "400"], dict(radii=(0.5, 0.25), n_max=400)),
        "anytime": (["--budget", "400", "--tolerance", "0.05"], dict(budget=400, tolerance=0.05)),
    }
    for mode, (flags, fields) in modes.items():
        cli_out, typed_out = tmp_path / f"{mode}-cli.tsv", tmp_path / f"{mode}-typed.tsv"
        assert main([*base, *flags, "--out", str(cli_out)]) == 0
        opts = CertifyOptions(smoothing=_smoothing(typed_out, skip=13, max=3), n0=100, **fields)
        assert certify(opts) == 0
        assert _rows(typed_out) == _rows(cli_out) and len(_rows(cli_out)) == 4, mode  # header + 3 rows
        cli, typed = _settings(cli_out), _settings(typed_out)
        cli.pop("speed"), typed.pop("speed")  # measured per run
        assert cli == typed, mode
        assert cli["batch"] == 400 and cli["sigma_source"] == "checkpoint"


def test_predict_runs_from_typed_options_as_from_its_command_line(tmp_path):
    from smoothguard.cli.predict import PredictOptions, predict

    base = ["predict", "--max", "3", "--skip", "17", "--threads", "1", "--device", "cpu"]
    for mode, flags, fields in (("fixed", ["--n", "200"], dict(n=200)),
                                ("adaptive", ["--adaptive", "--n-max", "500"], dict(adaptive=True, n_max=500))):
        cli_out, typed_out = tmp_path / f"{mode}-cli.tsv", tmp_path / f"{mode}-typed.tsv"
        assert main([*base, *flags, "--out", str(cli_out)]) == 0
        smoothing = _smoothing(typed_out, skip=17, max=3)
        assert predict(PredictOptions(smoothing=smoothing, **fields)) == 0
        assert _rows(typed_out) == _rows(cli_out) and len(_rows(cli_out)) == 4, mode
        cli, typed = _settings(cli_out), _settings(typed_out)
        for s in (cli, typed):
            s.pop("speed")
        assert cli == typed, mode


def test_certify_and_predict_validate_leaves_the_namespace_as_parsed():
    from smoothguard.cli import certify as C
    from smoothguard.cli import predict as P

    parser = build_parser()
    ns = parser.parse_args(["certify", "--radii", "0.5,0.25"])
    before = dict(vars(ns))
    assert C.validate(ns) == [0.5, 0.25] and vars(ns) == before  # the runner validates before it runs
    assert C.validate(parser.parse_args(["certify"])) is None
    ns = parser.parse_args(["predict"])
    before = dict(vars(ns))
    assert P.validate(ns) is None and vars(ns) == before and ns.n is None and ns.batch is None
    with pytest.raises(ValueError, match="--n 5 has no effect with --radii"):
        C.validate(parser.parse_args(["certify", "--radii", "0.5", "--n", "5"]))
    with pytest.raises(ValueError, match="--sigma"):  # the smoothing options are checked too
        P.validate(parser.parse_args(["predict", "--sigma", "-1"]))


def test_evaluate_runs_from_typed_options_as_from_its_command_line(tmp_path):
    from smoothguard.cli import evaluate as E

    cli_dir, typed_dir = tmp_path / "cli", tmp_path / "typed"
    assert main(["evaluate", "--max", "3", "--skip", "5", "--attacks", "fgsm,pgd", "--steps", "3", "--restarts", "1",
                 "--threads", "1", "--device", "cpu", "--no-plots", "--out-dir", str(cli_dir)]) == 0
    opts = E.EvaluateOptions(out_dir=typed_dir, data=DataSelection(skip=5, max=3), attacks=("fgsm", "pgd"), steps=3,
                             restarts=1, plots=False, device=torch.device("cpu"))
    assert E.evaluate(opts) == 0
    per_example = (cli_dir / "per_example.tsv").read_text()
    assert (typed_dir / "per_example.tsv").read_text() == per_example and len(per_example.splitlines()) == 4
    cli, typed = (json.loads((d / "table.json").read_text()) for d in (cli_dir, typed_dir))
    for r in (cli, typed):
        r["settings"].pop("command")
    assert cli["settings"] == typed["settings"] and cli["settings"]["eps"] == 0.1 and cli["settings"]["batch"] == 500
    for key in ("clean_accuracy", "robust_accuracy", "n", "mode"):
        assert cli["evaluation"][key] == typed["evaluation"][key], key
    # validate resolves without touching the Namespace (the runner validates before it runs)
    ns = build_parser().parse_args(["evaluate", "--out-dir", "x", "--norm", "l2", "--curves", "--eps-grid", "0,1"])
    before = dict(vars(ns))
    eps, attacks, curve_steps, grids, sources = E.validate(ns)
    assert vars(ns) == before and eps == 1.0 and curve_steps == 20 and sources == []
    assert grids["l2"] == [0.0, 1.0] and grids["linf"] == list(E.EvaluateOptions(out_dir="x").eps_grid_linf)


def test_smooth_eval_runs_from_typed_options_as_from_its_command_line(tmp_path):
    from smoothguard.cli import smooth_eval as S
    from smoothguard.evaluation.smoothed_inference import SmoothEvalGrid, SmoothEvalOptions

    assert main(["smooth-eval", "--max", "2", "--skip", "3", "--sigmas", "0.25", "--m", "2", "--methods", "hard",
                 "--attacks", "none", "--threads", "1", "--device", "cpu", "--no-plots",
                 "--out-dir", str(tmp_path / "cli")]) == 0
    cmd = S.SmoothEvalCommandOptions(grid=SmoothEvalGrid((0.25,), (2,), ("hard",), ()),
                                     evaluation=SmoothEvalOptions(device=torch.device("cpu")),
                                     data=DataSelection(skip=3, max=2), out_dir=tmp_path / "typed", plots=False)
    assert S.smooth_eval(cmd) == 0
    assert _rows(tmp_path / "typed" / "smooth_eval.tsv") == _rows(tmp_path / "cli" / "smooth_eval.tsv")
    cli, typed = (json.loads((tmp_path / d / "table.json").read_text()) for d in ("cli", "typed"))
    for r in (cli, typed):
        r["settings"].pop("command")
    assert cli["settings"] == typed["settings"] and cli["rows"] == typed["rows"]
    assert cli["result_file"] == str(tmp_path / "cli" / "smooth_eval.tsv")


@pytest.mark.parametrize("step, needle", [
    ("[certify.x]\nn0 = 0\nmax = 1\n", "n0"),  # the runner names the key with its flag: n0 (--n0)
    ("[certify.x]\nradii = \"0.5\"\nn = 10\nmax = 1\n", "has no effect with radii"),
    ("[predict.x]\nadaptive = true\nn = 10\nmax = 1\n", "has no effect with adaptive"),
    ("[predict.x]\nsigma = -1.0\nmax = 1\n", "sigma"),
])
def test_the_runner_checks_certify_and_predict_with_their_own_validate(tmp_path, step, needle):
    from smoothguard.cli.run import load_experiment
    from smoothguard.runner import ExperimentError

    path = tmp_path / "exp.toml"
    path.write_text(step)
    with pytest.raises(ExperimentError, match=needle):  # refused when the file is loaded, before any step runs
        load_experiment(path, tmp_path / "run")


def test_train_denoiser_runs_from_typed_options_as_from_its_command_line(tiny_idx_root, tmp_path):
    from smoothguard.cli.train_denoiser import DenoiserOptions, train_denoiser
    from smoothguard.models import load_checkpoint
    from smoothguard.training import TrainConfig

    assert main(["train-denoiser", "--data", "mnist", "--root", str(tiny_idx_root), "--objective", "mse",
                 "--depth", "2", "--width", "4", "--epochs", "1", "--batch", "16", "--max-test", "10",
                 "--threads", "1", "--device", "cpu", "--out-dir", str(tmp_path / "cli")]) == 0
    # the command's loop defaults for a denoiser: Adam, lr 1e-3, no weight decay, step 30
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam", weight_decay=0.0, lr_step=30)
    opts = DenoiserOptions(out_dir=tmp_path / "typed", objective="mse", depth=2, width=4, config=config,
                           data=DataSelection("mnist", root=str(tiny_idx_root), split="train"), max_test=10,
                           device=torch.device("cpu"))
    assert train_denoiser(opts) == 0
    cli_model, cli_meta = load_checkpoint(tmp_path / "cli" / "model.pt")
    typed_model, typed_meta = load_checkpoint(tmp_path / "typed" / "model.pt")
    for (name, a), (_, b) in zip(cli_model.state_dict().items(), typed_model.state_dict().items()):
        assert torch.equal(a, b), name  # same seeds, same minibatches: the same weights
    assert cli_meta["kind"] == typed_meta["kind"] == "denoiser"
    assert cli_meta["model_options"] == typed_meta["model_options"] == {"depth": 2, "width": 4}


def test_train_denoiser_validate_refuses_what_needs_no_data(tmp_path):
    from smoothguard.cli import train_denoiser as td

    parser = build_parser()

    def check(*extra):
        return td.validate(parser.parse_args(["train-denoiser", "--out-dir", str(tmp_path / "o"), *extra]))

    assert check() == ()
    assert check("--objective", "stability", "--surrogates", "a.pt,b.pt") == ("a.pt", "b.pt")
    for extra, needle in ((("--noise-sd", "0"), "--noise-sd must be > 0"),
                          (("--classifier", "c.pt", "--surrogates", "a.pt"), "not both"),
                          (("--surrogates", ","), "comma-separated"),
                          (("--objective", "stability"), "needs --classifier")):
        with pytest.raises(ValueError, match=needle):
            check(*extra)
    assert not (tmp_path / "o").exists()  # nothing written by a refusal


def test_import_model_runs_from_typed_options_as_from_its_command_line(tmp_path):
    from smoothguard.cli.import_model import ImportOptions, import_model
    from smoothguard.models import load_checkpoint, load_default_model

    ref, _ = load_default_model()
    torch.save(ref[1].state_dict(), tmp_path / "sd.pt")  # the LeNet without its Normalize layer
    assert main(["import-model", "--arch", "lenet", "--weights", str(tmp_path / "sd.pt"), "--mean", "0.2860",
                 "--std", "0.3530", "--noise-sd", "0.25", "--check-images", "20", "--device", "cpu",
                 "--out", str(tmp_path / "cli.pt")]) == 0
    opts = ImportOptions(out=str(tmp_path / "typed.pt"), weights=str(tmp_path / "sd.pt"), arch="lenet",
                         mean=[0.2860], std=[0.3530], noise_sd=0.25, check_images=20, device=torch.device("cpu"))
    assert import_model(opts) == 0
    cli_model, cli_meta = load_checkpoint(tmp_path / "cli.pt")
    typed_model, typed_meta = load_checkpoint(tmp_path / "typed.pt")
    for (name, a), (_, b) in zip(cli_model.state_dict().items(), typed_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert cli_meta["import"]["check"] == typed_meta["import"]["check"]  # same images, same noise seed
    assert typed_meta["noise_sd"] == 0.25 and typed_meta["mean"] == pytest.approx([0.2860])


def test_serve_validate_refuses_bad_options_before_loading_anything(tmp_path):
    from smoothguard.cli import serve

    parser = build_parser()
    for extra, needle in ((("--port", "70000"), "--port"), (("--max-request-mb", "0"), "--max-request-mb"),
                          (("--request-timeout", "-1"), "--request-timeout")):
        with pytest.raises(ValueError, match=needle):
            serve.options(parser.parse_args(["serve", *extra]))
    opts = serve.options(parser.parse_args(["serve", "--port", "0", "--log-requests"]))
    assert isinstance(opts, serve.ServeOptions) and opts.port == 0 and opts.log_requests and opts.model is None
