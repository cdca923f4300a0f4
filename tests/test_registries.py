"""Registries are declared once and never changed at import time (issue 19): the attack
table, the objective table, the checkpoint kinds, the architectures, the denoisers and the
noises. The attack registry builds exactly the attacks ``smoothguard attack`` built before."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import torch
from torch import nn

SRC = Path(__file__).resolve().parents[1] / "src" / "smoothguard"
#: every registry table, by the module that declares it
REGISTRIES = {"attacks/registry.py": "ATTACKS", "training/registry.py": "OBJECTIVES",
              "models/checkpoint.py": "MODEL_KINDS", "models/registry.py": "_BUILDERS",
              "models/denoiser.py": "_DENOISERS", "noise.py": "NOISES"}
TABLE_NAMES = {"ATTACKS", "COMMAND_ATTACKS", "OBJECTIVES", "MODEL_KINDS", "_BUILDERS", "_DENOISERS", "NOISES",
               "FORMATS"}
MUTATORS = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__"}


@functools.cache
def _trees() -> dict[str, ast.Module]:
    """Every module of the package, parsed once: {path relative to the package: tree}."""
    return {p.relative_to(SRC).as_posix(): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))}


def _mutations(tree: ast.AST) -> list[str]:
    """``TABLE.update(...)``, ``TABLE[k] = v`` and ``del TABLE[k]`` anywhere in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            base = node.func.value
            if isinstance(base, ast.Name) and base.id in TABLE_NAMES:
                out.append(f"line {node.lineno}: {base.id}.{node.func.attr}")
            if isinstance(base, ast.Attribute) and base.attr in TABLE_NAMES:
                out.append(f"line {node.lineno}: .{base.attr}.{node.func.attr}")
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, ast.AugAssign) else []
        for t in targets:
            if isinstance(t, ast.Subscript):
                v = t.value
                name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else None
                if name in TABLE_NAMES:
                    out.append(f"line {node.lineno}: {name}[...] assigned")
    return out


def test_no_module_changes_a_registry():
    bad = {}
    for path, tree in _trees().items():
        found = _mutations(tree)
        if found:
            bad[path] = found
    assert not bad, f"registries changed outside their declaration: {bad}"


def test_the_mutation_finder_finds_an_update_and_an_item_assignment():
    tree = ast.parse("OBJECTIVES.update({'x': 1})\nMODEL_KINDS['d'] = f\nother.update({})\n")
    assert sorted(m.split(": ")[1] for m in _mutations(tree)) == ["MODEL_KINDS[...] assigned", "OBJECTIVES.update"]


@pytest.mark.parametrize("module,name", sorted(REGISTRIES.items()))
def test_each_registry_is_declared_once_in_its_module(module, name):
    declared = [p for p, tree in _trees().items()
                if any(isinstance(n, (ast.Assign, ast.AnnAssign)) and
                       any(isinstance(t, ast.Name) and t.id == name
                           for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
                       for n in tree.body)]
    # the package's __init__ may re-export the table under its name, never build another
    assert module in declared
    for other in set(declared) - {module}:
        src = (SRC / other).read_text(encoding="utf-8")
        assert f"from smoothguard.{module[:-3].replace('/', '.')} import" in src or other.endswith("__init__.py"), \
            f"{other} declares its own {name}"


def test_the_attack_table_is_the_registry_and_every_class_once():
    from smoothguard import attacks
    from smoothguard.attacks.base import Attack
    from smoothguard.attacks.registry import ATTACKS, COMMAND_ATTACKS, REGISTRY

    assert set(attacks.ATTACKS) == set(ATTACKS)  # the package's table names the same attacks
    assert all(attacks.ATTACKS[k] is ATTACKS[k] for k in ATTACKS)
    assert len({e.cls for e in REGISTRY}) == len(REGISTRY)
    assert all(issubclass(e.cls, Attack) and e.name == e.cls.name for e in REGISTRY)
    before = ["pgd", "fgsm", "fgm", "apgd", "cw", "ddn", "square", "nattack"]  # the command's list before
    assert [a for a in COMMAND_ATTACKS if a in before] == before
    assert all(e.command == (e.name in COMMAND_ATTACKS) for e in REGISTRY)


class _Tiny(nn.Module):
    in_shape, num_classes = (1, 4, 4), 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


# the attacks `smoothguard attack` built before the registry (cli/attack.py build_attack), by hand
_BEFORE = {
    "pgd": lambda A, m: A.PGD(m, norm="l2", eps=0.5, steps=40, step_size=None, restarts=2, loss="cw", eot=1, seed=3),
    "apgd": lambda A, m: A.APGD(m, norm="l2", eps=0.5, steps=100, restarts=2, loss="cw", eot=1, seed=3),
    "fgsm": lambda A, m: A.FGSM(m, eps=0.5, loss="cw", eot=1, seed=3),
    "fgm": lambda A, m: A.FGM(m, eps=0.5, loss="cw", eot=1, seed=3),
    "cw": lambda A, m: A.CW(m, eps=0.5, steps=1000, seed=3),
    "ddn": lambda A, m: A.DDN(m, eps=0.5, steps=100, loss="cw", eot=1, seed=3),
    # the query budgets are the registry's defaults (smoothguard.defaults may change them)
    "square": lambda A, m: A.Square(m, norm="l2", eps=0.5, max_queries=_queries("square"), seed=3),
    "nattack": lambda A, m: A.NAttack(m, norm="l2", eps=0.5, max_queries=_queries("nattack"), seed=3),
}


def _queries(name):
    from smoothguard.attacks.registry import COMMAND_ATTACKS

    return COMMAND_ATTACKS[name].default_queries


@pytest.mark.parametrize("name", sorted(_BEFORE))
def test_the_registry_builds_the_attack_the_command_built_before(name):
    from smoothguard import attacks as A
    from smoothguard.attacks.registry import COMMAND_ATTACKS

    model = _Tiny()
    norm = "l2"
    loss = "cw" if COMMAND_ATTACKS[name].takes("loss") else "ce"
    built = COMMAND_ATTACKS[name].build(model, 0.5, norm=norm, steps=None, step_size=None,
                                        restarts=2 if COMMAND_ATTACKS[name].takes("restarts") else 1,
                                        loss=loss, eot=1, queries=None, seed=3)
    expected = _BEFORE[name](A, model)
    assert type(built) is type(expected)
    assert repr(built) == repr(expected)
    skip = {"model", "_generator", "generator", "on_iteration"}
    mine = {k: v for k, v in vars(built).items() if k not in skip and not isinstance(v, (nn.Module, torch.Generator))}
    theirs = {k: v for k, v in vars(expected).items() if k not in skip and not isinstance(v, (nn.Module, torch.Generator))}
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert type(mine[k]) is type(theirs[k]) and (callable(mine[k]) or mine[k] == theirs[k]), k


def test_unknown_attack_names_the_allowed_ones():
    from smoothguard.attacks.registry import get_attack_entry

    with pytest.raises(ValueError, match="--attack must be one of pgd, fgsm, fgm, apgd, cw, ddn, square, nattack"):
        get_attack_entry("fgsn")
    with pytest.raises(ValueError, match="got 'epgd'"):  # library-only attacks are not offered by the command
        get_attack_entry("epgd")


def test_objectives_split_into_classifier_and_denoiser_ones_and_checkpoints_know_both_kinds():
    from smoothguard.models.checkpoint import MODEL_KINDS
    from smoothguard.training import OBJECTIVES as exported
    from smoothguard.training.registry import CLASSIFIER_OBJECTIVES, DENOISER_OBJECTIVES, OBJECTIVES

    assert exported is OBJECTIVES
    assert sorted(MODEL_KINDS) == ["classifier", "denoiser"]
    assert set(CLASSIFIER_OBJECTIVES) | set(DENOISER_OBJECTIVES) == set(OBJECTIVES)
    assert not set(CLASSIFIER_OBJECTIVES) & set(DENOISER_OBJECTIVES)
    assert all(o.startswith("denoiser_") for o in DENOISER_OBJECTIVES)
