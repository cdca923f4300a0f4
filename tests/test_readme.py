"""The README is a tested document: every ```python block runs as written, every
``smoothguard`` command line in a ```bash block names a real command and real options, and
the first screen's ``make demo`` / ``make test`` are what the Makefile does.

Blocks run in a fresh namespace each, in a temporary folder, with ``load_dataset`` pointed
at a few bundled demo images (whatever dataset a block names: the full Fashion-MNIST
would take minutes to train on), training capped at 2 epochs, and with the user's own files that the "Your own model"
block names (``my_nets.py``, ``my_weights.pt``, ``my_lenet.pt``) written beforehand, as a
user would have them."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY = 8  # images per split the blocks see


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of ``lang``."""
    out, lines = [], README.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return out


PYTHON_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")

_USER_NETS = textwrap.dedent('''
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
''')


@pytest.fixture
def readme_env(tmp_path, monkeypatch):
    import smoothguard.data as data_pkg
    from smoothguard.data import core
    from smoothguard.models import load_default_model

    real = core.load_dataset

    def tiny(name, split="test", root=None, **kwargs):
        assert name in core.DATASETS and split in core.SPLITS, (name, split)  # the block's call is valid
        return real("demo", "test").subset(max_count=TINY, start=0 if split == "test" else 100)

    import smoothguard.training as training_pkg

    class FewEpochs(training_pkg.TrainConfig):  # tiny data, few epochs: 20 checkpointed epochs cost ~30 s here
        def __post_init__(self):
            self.epochs = min(self.epochs, 2)
            super().__post_init__()

    monkeypatch.setattr(training_pkg, "TrainConfig", FewEpochs)
    monkeypatch.setattr(data_pkg, "load_dataset", tiny)
    monkeypatch.setattr(core, "load_dataset", tiny)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_nets.py").write_text(_USER_NETS)
    exec(_USER_NETS, ns := {})
    torch.save(ns["build_model"]().state_dict(), tmp_path / "my_weights.pt")
    torch.save(load_default_model()[0][1].state_dict(), tmp_path / "my_lenet.pt")
    yield tmp_path
    import sys

    sys.modules.pop("my_nets", None)


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 7


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"README.md:{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_written(readme_env, line, code, capsys):
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


# ------------------------------------------------------------------------------------- bash


def _command_lines() -> list[tuple[int, list[str]]]:
    """The argv (after ``smoothguard``) of every command line in the bash blocks."""
    out = []
    for start, code in BASH_BLOCKS:
        joined = re.sub(r"\\\n\s*", " ", code)
        for offset, raw in enumerate(joined.splitlines()):
            text = raw.split(" #", 1)[0].strip()
            if text.startswith("#"):
                continue
            words = shlex.split(text) if text else []
            if "smoothguard" in words:
                argv = words[words.index("smoothguard") + 1:]
                if argv and not argv[0].startswith("-"):
                    out.append((start + offset, argv))
    return out


COMMAND_LINES = _command_lines()


def test_every_readme_command_line_names_real_options():
    from smoothguard.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(COMMAND_LINES) >= 30
    problems = []
    for line, argv in COMMAND_LINES:
        name = argv[0]
        if name not in sub.choices:
            problems.append(f"README.md:{line}: no command {name!r}")
            continue
        opts = {o for a in sub.choices[name]._actions for o in a.option_strings}
        for word in argv[1:]:
            if word.startswith("--") and word.split("=", 1)[0] not in opts:
                problems.append(f"README.md:{line}: smoothguard {name} has no option {word.split('=', 1)[0]}")
    assert not problems, "\n".join(problems)


def test_readme_commands_parse(capsys):
    """Beyond the names: each command line's values parse (choices, types, required options)."""
    from smoothguard.cli import build_parser

    parser = build_parser()
    failed = []
    for line, argv in COMMAND_LINES:
        try:
            parser.parse_args(argv)
        except SystemExit:
            failed.append(f"README.md:{line}: {' '.join(argv)}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert not failed, "\n".join(failed)


def test_first_screen_make_targets_are_what_the_readme_says():
    first_screen = README.split("---", 1)[0]
    assert "make demo" in first_screen and "make test" in first_screen
    make = (ROOT / "Makefile").read_text()
    recipe = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+):[^\n]*\n((?:\t[^\n]*\n)+)", make, re.M)}
    assert "smoothguard demo" in recipe["demo"] and "pytest" in recipe["test"]
    assert "torch==2.13.0" in make  # the README's pin
    # the demo writes what the first screen names
    demo_src = (ROOT / "src" / "smoothguard" / "cli" / "demo.py").read_text()
    for name in ("smoothguard-demo", "certify.tsv", "certified_accuracy"):
        assert name in first_screen and name in demo_src


def test_files_the_readme_names_exist():
    missing = [p for p in sorted(set(re.findall(r"\b((?:experiments|docs|benchmarks)/[\w./-]+\.(?:toml|sh|png|py))",
                                                 README))) if not (ROOT / p).exists()]
    assert not missing, missing
