#!/usr/bin/env python3
"""The hand-made mutations of issue 24's table (and a few more), each applied to a fresh
copy of src/ and tests/ in a temporary folder (never to the repository), with the
guarantee and projection tests run against it: every mutation must make a test fail.

    .venv/bin/python scripts/mutation_table.py [NAME ...]   # default: baseline + all

"baseline" (no mutation) must pass. Complements scripts/mutation.py (mutmut's
systematic operators), which cannot write mutations such as "each restart overwrites the
best" or "the inner attack minimizes".
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
PY = sys.executable
MUTS = {
    "certify_abstain_0.3": ("src/smoothguard/smoothing/core.py", "certified = p_lower >= 0.5", "certified = p_lower >= 0.3"),
    "pgd_restart_overwrites_best": ("src/smoothguard/attacks/pgd.py", "take = adv | (loss > best_loss[idx])",
                                    "take = adv | (loss > best_loss[idx]) | (k == 0)"),
    "pgd_returns_last_iterate": ("src/smoothguard/attacks/pgd.py", "take = adv | (loss > best_loss[idx])",
                                 "take = adv | torch.ones_like(adv)"),
    "trades_kl_reversed": ("src/smoothguard/training/adversarial.py", "kl = kl_div_rows(logits_clean, logits_adv).mean()",
                           "kl = kl_div_rows(logits_adv, logits_clean).mean()"),
    "trades_inner_minimizes": ("src/smoothguard/training/adversarial.py",
                               "return kl_div_rows(clean_logits[idx], logits), logits",
                               "return -kl_div_rows(clean_logits[idx], logits), logits"),
    "predict_4alpha": ("src/smoothguard/smoothing/core.py", "preds = [c if p <= alpha else ABSTAIN",
                       "preds = [c if p <= 4 * alpha else ABSTAIN"),
    "adaptive_abstain_0.3": ("src/smoothguard/smoothing/adaptive.py", "thresholds[0] = 0.5\n    return thresholds",
                             "thresholds[0] = 0.3\n    return thresholds"),
    "pgd_initial_success_untargeted": ("src/smoothguard/attacks/pgd.py",
        "success = is_adversarial(scores0.argmax(1), y, targets)", "success = is_adversarial(scores0.argmax(1), y, None)"),
    "pgd_never_stops_on_success": ("src/smoothguard/attacks/pgd.py", "                if not stop:\n                    adv =",
                                   "                if stop:\n                    adv ="),
    "certify_strict_half": ("src/smoothguard/smoothing/core.py", "certified = p_lower >= 0.5", "certified = p_lower > 0.5"),
    "predict_strict_alpha": ("src/smoothguard/smoothing/core.py", "preds = [c if p <= alpha else ABSTAIN",
                             "preds = [c if p < alpha else ABSTAIN"),
    "linf_project_2eps": ("src/smoothguard/attacks/base.py", "delta = delta.clamp(-eps, eps)",
                          "delta = delta.clamp(-2 * eps, 2 * eps)"),
}


def main(argv: list[str]) -> int:
    names = argv or ["baseline", *MUTS]
    base = tempfile.mkdtemp(prefix="smoothguard-mutation-table-")
    survived = []
    for name in names:
        work = f"{base}/{name}"
        shutil.copytree(f"{ROOT}/src", f"{work}/src", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(f"{ROOT}/tests", f"{work}/tests", ignore=shutil.ignore_patterns("__pycache__"))
        if name != "baseline":
            path, old, new = MUTS[name]
            text = open(f"{work}/{path}").read()
            assert text.count(old) == 1, (name, old)
            open(f"{work}/{path}", "w").write(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=f"{work}/src", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        chk = subprocess.run([PY, "-c", "import smoothguard; print(smoothguard.__file__)"],
                             env=env, capture_output=True, text=True, cwd=work).stdout.strip()
        assert chk.startswith(work), chk
        out = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                              "tests/test_guarantees.py", "tests/test_projection.py"],
                             env=env, capture_output=True, text=True, cwd=work).stdout
        failed = re.findall(r"^FAILED (\S+)", out, re.M)
        summary = out.strip().splitlines()[-1]
        print(f"{name}: {summary}")
        for f in failed:
            print(f"    killed by {f}")
        if (name == "baseline") == bool(failed):
            survived.append(name)
        sys.stdout.flush()
        shutil.rmtree(work, ignore_errors=True)
    print("every mutation killed, baseline passes" if not survived else f"NOT OK: {survived}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
