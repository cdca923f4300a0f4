"""The mutation-testing scripts stay in step with the code they mutate (issue 24).

scripts/mutation_table.py applies hand-written mutations by text replacement, and
scripts/mutation.py names files, functions and tests per target: a refactor that moves
the text or renames a function used to break them silently until the next run (the PREDICT
and adaptive-abstain mutations did, from 47c3e0f until it was noticed). These checks
run in CI and need neither mutmut nor a mutation run.
"""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLE = _load("mutation_table")
MUTATION = _load("mutation")


@pytest.mark.parametrize("name", sorted(TABLE.MUTS))
def test_each_hand_mutation_finds_its_text_exactly_once(name):
    path, old, new = TABLE.MUTS[name]
    text = (ROOT / path).read_text()
    assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times in {path}"
    assert new != old
    ast.parse(text.replace(old, new))  # the mutant still compiles: a test, not a syntax error, must kill it


def _defined(tree):
    """Module-level functions and Class.method names of a module."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef))
    return names


@pytest.mark.parametrize("target", sorted(MUTATION.TARGETS))
def test_each_target_names_existing_files_functions_and_tests(target):
    file, functions, tests = MUTATION.TARGETS[target]
    path = ROOT / file
    assert path.is_file(), file
    if functions is not None:
        missing = set(functions) - _defined(ast.parse(path.read_text()))
        assert not missing, f"{target}: no such functions in {file}: {sorted(missing)}"
    paths = [t.split("::")[0] for t in tests if t.startswith("tests/")]
    assert paths, target
    for t in paths:
        assert (ROOT / t).is_file(), f"{target}: {t} does not exist"
