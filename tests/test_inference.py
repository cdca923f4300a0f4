"""Smoothed inference (Nemcovsky et al.): vote methods, the SmoothedModel module and its
gradients, and the ``smooth-eval`` command end to end."""

import json
import math
import warnings

import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothguard.attacks import PGD
from smoothguard.cli import main
from smoothguard.data import load_dataset
from smoothguard.models import load_default_model
from smoothguard.smoothing import SmoothedClassifier, SmoothedModel, VOTE_METHODS, image_seed, vote_scores
from smoothguard.smoothing.inference import smoothed_scores
from smoothguard.utils import make_generator


class FakeBase(nn.Module):
    """Ignores its input: returns the rows of ``table`` in order, one per input row."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert x.shape[0] <= self.table.shape[0]
        return self.table[: x.shape[0]]


# Case A: draws [5, 4.9, 0], [5, 4.9, 0], [0, 10, -1] (worked out by hand):
#   hard: argmaxes 0, 0, 1 -> class 0 (frequencies 2/3, 1/3, 0)
#   soft: softmax [.523, .473, .004] twice and [~0, ~1, ~0]: means .349, .649, .003 -> class 1
#   soft_logits: mean logits 3.33, 6.6, -0.33 -> class 1
#   weighted (2^-rank): 1 + 1 + .5 = 2.5, .5 + .5 + 1 = 2, .25 * 3 = .75 -> class 0
CASE_A = ([[5, 4.9, 0], [5, 4.9, 0], [0, 10, -1]], {"hard": 0, "soft": 1, "soft_logits": 1, "weighted": 0})
# Case B: draws [0, 10], [0, -30], [0, 1]:
#   hard: 1, 0, 1 -> 1; soft: p1 = (~1 + ~0 + .731) / 3 = .577 -> 1
#   soft_logits: mean logit of class 1 = -19/3 < 0 -> 0; weighted: 1 + .5 + 1 > .5 + 1 + .5 -> 1
CASE_B = ([[0, 10], [0, -30], [0, 1]], {"hard": 1, "soft": 1, "soft_logits": 0, "weighted": 1})


@pytest.mark.parametrize("case", [CASE_A, CASE_B])
def test_vote_methods_agree_with_hand_computed_votes(case):
    table, expected = case
    k = len(table[0])
    x = torch.rand(1, 1, 4, 4)
    for method in VOTE_METHODS:
        fake = FakeBase(table)
        g = SmoothedClassifier(fake, k, 0.5)
        assert g.vote(x, 3, method, seeds=[7]).tolist() == [expected[method]], method
        assert fake.calls == 1  # the three draws went through one forward pass
        sm = SmoothedModel(FakeBase(table), 0.5, 3, method, seed=1)
        with torch.no_grad():
            assert sm(x).argmax(1).tolist() == [expected[method]], method


def test_hard_scores_are_vote_frequencies_and_weighted_scores_are_normalized_rank_weights():
    table, _ = CASE_A
    logits = torch.tensor(table).unsqueeze(1)  # (m=3, N=1, K=3)
    hard = vote_scores(logits, "hard")[0]
    assert hard.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    weighted = vote_scores(logits, "weighted")[0]
    total = 1 + 0.5 + 0.25
    assert weighted.tolist() == pytest.approx([2.5 / 3 / total, 2.0 / 3 / total, 0.75 / 3 / total])
    assert float(weighted.sum()) == pytest.approx(1.0)


def _oracle(draws, method):
    """Plain-Python smoothed scores of one image from a list of per-draw logit lists."""
    k = len(draws[0])
    acc = [0.0] * k
    for z in draws:
        if method == "hard":
            acc[max(range(k), key=lambda c: (z[c], -c))] += 1
        elif method == "soft":
            e = [math.exp(v - max(z)) for v in z]
            for c in range(k):
                acc[c] += e[c] / sum(e)
        elif method == "soft_logits":
            for c in range(k):
                acc[c] += z[c]
        else:
            order = sorted(range(k), key=lambda c: (-z[c], c))
            for r, c in enumerate(order):
                acc[c] += 2.0 ** -r / (2 - 2.0 ** (1 - k))
    return [a / len(draws) for a in acc]


def test_vote_scores_match_a_plain_python_oracle():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 5, 4, generator=gen) * 3
    for method in VOTE_METHODS:
        got = vote_scores(logits, method)
        for n in range(5):
            want = _oracle(logits[:, n].tolist(), method)
            assert got[n].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6), method


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_hard_votes_are_the_samplers_counts_under_the_same_seeds():
    net = _tiny_net()
    x = torch.rand(3, 1, 8, 8)
    g = SmoothedClassifier(net, 5, 0.5)
    seeds = [image_seed(0, i) for i in range(3)]
    for m, batch in ((250, 400), (37, 16)):
        counts = g.sample_counts(x, m, batch, seeds=seeds)
        scores = smoothed_scores(g, x, m, "hard", batch, seeds=seeds)
        assert torch.equal((scores * m).round().long(), counts)
        assert torch.equal(g.vote(x, m, "hard", batch, seeds=seeds), counts.argmax(1))


def test_hard_vote_frequency_of_a_linear_classifier_matches_the_normal_cdf():
    # logits [0, w.x + b]: a draw votes 1 iff w.(x + d) + b > 0, probability Phi((w.x + b) / (sigma ||w||))
    w = torch.tensor([0.5, -1.0, 2.0, 0.25])
    b, sigma, m = -0.3, 0.4, 20_000

    class Linear2(nn.Module):
        def forward(self, x):
            z = x.flatten(1) @ w + b
            return torch.stack([torch.zeros_like(z), z], dim=1)

    x = torch.tensor([[[[0.2, 0.4], [0.3, 0.1]]]])
    p = float(norm.cdf((float(x.flatten() @ w) + b) / (sigma * float(w.norm()))))
    g = SmoothedClassifier(Linear2(), 2, sigma)
    freq = float(smoothed_scores(g, x, m, "hard", 1000, seeds=[11])[0, 1])
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / m)
    with torch.no_grad():
        sm_freq = float(SmoothedModel(Linear2(), sigma, m, "hard", seed=5)(x)[0, 1].exp())
    assert abs(sm_freq - p) < 4 * math.sqrt(p * (1 - p) / m)


def test_labels_only_base_allows_hard_votes_only():
    def labels(batch):
        return (batch.flatten(1).mean(1) > 0.5).long()

    g = SmoothedClassifier(labels, 2, 0.1)
    x = torch.full((2, 1, 3, 3), 0.9)
    x[1] = 0.1
    assert g.vote(x, 20, "hard", seeds=[1, 2]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="needs logits"):
        g.vote(x, 20, "soft", seeds=[1, 2])


def test_m1_sigma0_is_the_base_model():
    net = _tiny_net(1)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        want = net(x)
        for method in VOTE_METHODS:
            out = SmoothedModel(net, 0.0, 1, method)(x)
            assert torch.equal(out.argmax(1), want.argmax(1)), method
            if method in ("soft", "soft_logits"):
                torch.testing.assert_close(out, torch.log_softmax(want, 1), rtol=1e-5, atol=1e-6)
        fake = FakeBase(torch.randn(6, 5).tolist())
        SmoothedModel(fake, 0.0, 16, "soft")(x)
        assert fake.calls == 1  # no noise: one pass, whatever m


def _per_draw_noise(seed, shape, sigma, m, sequential=False):
    gen = make_generator(seed, "cpu")
    if sequential:
        return [sigma * torch.randn((1, *shape), generator=gen)[0] for _ in range(m)]
    return list(sigma * torch.randn((m, *shape), generator=gen))


def test_soft_gradient_is_the_mean_of_the_per_draw_gradients():
    net = _tiny_net(2)
    x = torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 3, 4])
    sigma, m, seed = 0.3, 6, 123
    xg = x.clone().requires_grad_(True)
    probs = SmoothedModel(net, sigma, m, "soft", seed=seed)(xg).exp()
    (grad,) = torch.autograd.grad(probs.gather(1, y[:, None]).sum(), xg)
    per_draw = []
    for d in _per_draw_noise(seed, x.shape, sigma, m):
        xi = x.clone().requires_grad_(True)
        p = torch.softmax(net(xi + d), 1).gather(1, y[:, None]).sum()
        per_draw.append(torch.autograd.grad(p, xi)[0])
    torch.testing.assert_close(grad, torch.stack(per_draw).mean(0), rtol=1e-4, atol=1e-7)


def test_eot_gradient_of_the_smoothed_model_is_the_average_of_per_draw_gradients():
    """PGD with eot=k on the one-draw smoothed model averages k independent draws."""
    net = _tiny_net(3)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([1, 0, 2, 4])
    sigma, k, seed = 0.25, 5, 9
    atk = PGD(SmoothedModel(net, sigma, 1, "soft", seed=seed), eps=0.1, eot=k, seed=0, sanity_checks=False)
    objective = atk._objective(x, y, None, make_generator(0))
    _, grad, _ = atk._loss_grad(objective, x, torch.arange(4))
    want = []
    for d in _per_draw_noise(seed, x.shape, sigma, k, sequential=True):
        xi = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(xi + d), y, reduction="sum")
        want.append(torch.autograd.grad(loss, xi)[0])
    torch.testing.assert_close(grad, torch.stack(want).mean(0), rtol=1e-4, atol=1e-7)


def test_hard_and_weighted_values_are_votes_with_the_soft_gradient():
    net = _tiny_net(4)
    x = torch.rand(2, 1, 8, 8)
    sigma, m, seed = 0.4, 9, 77
    grads = {}
    for method in ("soft", "hard", "weighted"):
        xg = x.clone().requires_grad_(True)
        out = SmoothedModel(net, sigma, m, method, seed=seed)(xg)
        grads[method] = torch.autograd.grad(out[:, 2].sum(), xg)[0]
        if method != "soft":
            with torch.no_grad():
                logits = torch.stack([net(x + d) for d in _per_draw_noise(seed, x.shape, sigma, m)])
            torch.testing.assert_close(out.detach().exp(), vote_scores(logits, method), rtol=1e-5, atol=1e-6)
    assert grads["soft"].abs().sum() > 0
    torch.testing.assert_close(grads["hard"], grads["soft"])
    torch.testing.assert_close(grads["weighted"], grads["soft"])


def test_smoothed_model_is_stochastic_so_the_attack_asks_for_eot():
    net = _tiny_net(5)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    sm = SmoothedModel(net, 0.5, 4, "soft", seed=0)
    with torch.no_grad():
        assert not torch.equal(sm(x), sm(x))  # fresh noise per call
    with pytest.warns(UserWarning, match="stochastic"):
        PGD(sm, eps=0.1, steps=1, seed=0).run(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PGD(sm, eps=0.1, steps=1, eot=2, seed=0).run(x, y)


def test_smoothed_model_rejects_bad_arguments():
    net = _tiny_net()
    for kw, msg in (({"sigma": -0.1}, "sigma"), ({"m": 0}, "m "), ({"method": "mean"}, "vote method"),
                    ({"batch_size": 0}, "batch_size")):
        args = {"sigma": 0.1, "m": 2, "method": "soft", **kw}
        with pytest.raises(ValueError, match=msg):
            SmoothedModel(net, args.pop("sigma"), args.pop("m"), args.pop("method"), **args)


# ----------------------------------------------------------------------------- the command


def _tsv(path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]


GRID = ["--sigmas", "0,0.25", "--m", "1,4", "--methods", "hard,soft", "--attacks", "pgd,epgd,transfer",
        "--steps", "3", "--threads", "1", "--skip", "7"]


def test_smooth_eval_end_to_end_table_resume_and_refusal(tmp_path):
    out = tmp_path / "se"
    assert main(["smooth-eval", *GRID, "--max", "6", "--out-dir", str(out)]) == 0
    header, rows = _tsv(out / "smooth_eval.tsv")
    demo = load_dataset("demo", "test").subset(skip=7, max_count=6)
    assert [int(r[0]) for r in rows] == demo.indices.tolist()
    assert len(header) == 2 + 2 * 2 * 2 * 4 + 1  # idx label, 8 combinations x (clean + 3 attacks), time
    result = json.loads((out / "table.json").read_text())
    table = result["rows"]
    assert len(table) == 8
    assert {(r["sigma"], r["m"], r["method"]) for r in table} == {
        (s, m, meth) for s in (0.0, 0.25) for m in (1, 4) for meth in ("hard", "soft")}
    # the table is what the per-image rows say, and attacked accuracy never exceeds clean
    pos = {c: i for i, c in enumerate(header)}
    for r in table:
        acc = r["accuracy"]
        col = f"s{r['sigma']:g}_m{r['m']}_{r['method']}_"
        clean_ok = [int(row[pos[col + "clean"]]) == int(row[1]) for row in rows]
        assert acc["clean"] == pytest.approx(sum(clean_ok) / 6)
        for a in ("pgd", "epgd", "transfer"):
            ok = [c and int(row[pos[col + a]]) == int(row[1]) for c, row in zip(clean_ok, rows)]
            assert acc[a] == pytest.approx(sum(ok) / 6)
            assert acc[a] <= acc["clean"] and acc["worst"] <= acc[a]
    # sigma 0 is the base model, whatever m and the method
    model, _ = load_default_model()
    with torch.no_grad():
        base_acc = float((model(demo.images).argmax(1) == demo.labels).float().mean())
    for r in table:
        if r["sigma"] == 0:
            assert r["accuracy"]["clean"] == pytest.approx(base_acc)
            assert r["accuracy"] == table[0]["accuracy"]
    for name in ("table.md", "table.csv", "accuracy_vs_m.png", "accuracy_vs_m.svg", "accuracy_vs_sigma.png",
                 "accuracy_vs_sigma.svg"):
        assert (out / name).stat().st_size > 0, name

    # resume: two more images, the first six rows untouched, no duplicates
    assert main(["smooth-eval", *GRID, "--max", "8", "--out-dir", str(out), "--no-plots"]) == 0
    _, rows2 = _tsv(out / "smooth_eval.tsv")
    assert len(rows2) == 8 and len({r[0] for r in rows2}) == 8
    assert rows2[:6] == rows
    assert json.loads((out / "table.json").read_text())["rows"][0]["n"] == 8
    # other settings on the same file are refused, the file is left as it was
    before = (out / "smooth_eval.tsv").read_text()
    assert main(["smooth-eval", *GRID, "--max", "8", "--eps", "0.2", "--out-dir", str(out)]) == 2
    assert (out / "smooth_eval.tsv").read_text() == before


def test_smooth_eval_nattack_on_the_smoothed_probabilities(tmp_path):
    out = tmp_path / "na"
    assert main(["smooth-eval", "--max", "2", "--sigmas", "0.25", "--m", "2", "--methods", "soft,weighted",
                 "--attacks", "nattack", "--queries", "21", "--population", "10", "--threads", "1",
                 "--out-dir", str(out), "--no-plots", "--format", "csv"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["accuracy"]["nattack"] <= r["accuracy"]["clean"]


@pytest.mark.parametrize("bad", [
    ["--methods", "hard,mean"], ["--m", "0"], ["--m", "1.5"], ["--sigmas", "-0.1"], ["--sigmas", "0.1,0.1"],
    ["--attacks", "pgd,fgsm"], ["--norm", "l3"], ["--eps", "2"], ["--steps", "0"],
    ["--attacks", "nattack", "--queries", "10"], ["--max", "0"],
])
def test_smooth_eval_bad_flags_exit_2(tmp_path, bad, capsys):
    assert main(["smooth-eval", "--out-dir", str(tmp_path / "x"), "--threads", "1", *bad]) == 2
    err = capsys.readouterr().err
    assert "error" in err and any(flag in err for flag in bad if flag.startswith("--"))  # names the option
    assert not (tmp_path / "x" / "smooth_eval.tsv").exists()
