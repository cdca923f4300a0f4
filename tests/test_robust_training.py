"""Robust-training objectives (PGD-AT, TRADES, fast AT, SmoothAdv, stability,
consistency) and the noise-injection layers (PNI, CNI). Small and fast: tiny subsets of
the bundled demo set, a few steps each."""

import pytest
import torch
import torch.nn.functional as F

from smoothguard.attacks.base import lp_norms, project
from smoothguard.cli import main
from smoothguard.data import load_dataset
from smoothguard.models import get_model, load_checkpoint, save_checkpoint, set_noise_injection
from smoothguard.models.noise import CNI, PNI, noise_generator, noise_layers
from smoothguard.training import StepContext, TrainConfig, Trainer, get_objective

torch.set_num_threads(1)

META = {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28], "mean": [0.286], "std": [0.353]}


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("demo").subset(max_count=96)


def _lenet(info, **options):
    torch.manual_seed(0)
    return get_model("lenet", info.num_classes, info.input_shape, info.mean, info.std, **options)


def _ctx(seed=0, epoch=0):
    return StepContext(epoch, 1, 0, 1, torch.Generator().manual_seed(seed))


OBJECTIVE_CASES = [
    ("pgd_at", dict(eps=0.1, attack_steps=3), {}),
    ("pgd_at", dict(eps=0.1, attack_steps=2, adv_weight=0.5), {"noise_injection": "pni-w"}),
    ("pgd_at", dict(eps=1.0, norm="l2", attack_steps=2), {"noise_injection": "cni"}),
    ("trades", dict(eps=0.1, attack_steps=2, beta=1.0), {}),
    ("fast_at", dict(eps=0.1), {}),
    ("smoothadv", dict(noise_sd=0.25, eps=0.5, m_train=2, attack_steps=2, warmup_epochs=2), {}),
    ("smoothadv", dict(noise_sd=0.25, eps=0.5, attack="ddn", m_train=2, attack_steps=2), {}),
    ("stability", dict(noise_sd=0.25, lbd=1.0), {}),
    ("consistency", dict(noise_sd=0.25, m_train=2, lbd=10.0, eta=0.5), {}),
]


@pytest.mark.parametrize("name,kwargs,model_options", OBJECTIVE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OBJECTIVE_CASES)])
def test_each_objective_decreases_its_own_loss(tiny, name, kwargs, model_options):
    model = _lenet(tiny.info, **model_options)
    trainer = Trainer(model, get_objective(name, **kwargs),
                      TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="constant", seed=3))
    history = trainer.fit(tiny)
    losses = [row["train_loss"] for row in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


def test_trades_with_beta_zero_is_cross_entropy_training(tiny):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", seed=5)
    runs = {}
    for key, obj in (("ce", get_objective("standard")),
                     ("trades0", get_objective("trades", beta=0.0, eps=0.1, attack_steps=2)),
                     ("trades1", get_objective("trades", beta=1.0, eps=0.1, attack_steps=2))):
        model = _lenet(tiny.info)
        Trainer(model, obj, cfg).fit(tiny)
        runs[key] = model.state_dict()
    for k, v in runs["ce"].items():
        torch.testing.assert_close(runs["trades0"][k], v, rtol=1e-5, atol=1e-6)
    # and the comparison can fail: beta > 0 trains other weights
    assert any(not torch.allclose(runs["trades1"][k], v, atol=1e-4) for k, v in runs["ce"].items())


class _Recorder(torch.nn.Module):
    """Wraps a model and records every input batch and the mode it was called in."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, x.detach().clone()))
        return self.model(x)


def test_smoothadv_attack_keeps_its_noise_fixed_across_steps(tiny):
    m, n, steps = 3, 4, 3
    rec = _Recorder(_lenet(tiny.info))
    obj = get_objective("smoothadv", noise_sd=0.5, eps=1.0, m_train=m, attack_steps=steps)
    x, y = tiny.images[:n], tiny.labels[:n]
    rec.train()
    obj(rec, x, y, _ctx(1))
    attack_calls = [b for training, b in rec.calls if not training]
    train_calls = [b for training, b in rec.calls if training]
    assert len(attack_calls) == steps and len(train_calls) == 1
    # every call holds x' + d_i for the m draws; x' moves between steps, the d_i must not:
    # the differences between the copies of one image are d_i - d_j, invariant over steps
    diffs = [b.view(m, n, -1)[1:] - b.view(m, n, -1)[:1] for b in attack_calls + train_calls]
    for d in diffs[1:]:
        torch.testing.assert_close(d, diffs[0], atol=1e-5, rtol=0)
    assert float(diffs[0].abs().mean()) > 0.3  # real noise (sd 0.5), not zeros
    # the iterate itself did move
    assert not torch.allclose(attack_calls[0], attack_calls[-1])
    # and the next minibatch draws new noise
    rec.calls.clear()
    obj(rec, x, y, _ctx(2))
    d_next = rec.calls[0][1].view(m, n, -1)[1:] - rec.calls[0][1].view(m, n, -1)[:1]
    assert not torch.allclose(d_next, diffs[0], atol=1e-3)


def test_smoothadv_averages_probabilities_before_the_log(tiny):
    """One SmoothAdvPGD step equals a step along the gradient of
    -log((1/m) sum_i softmax(f(x + d_i))_y), computed directly with the attack's noise."""
    model = _lenet(tiny.info).eval()
    obj = get_objective("smoothadv", noise_sd=0.25, eps=0.5, m_train=4, attack_steps=1)
    x, y = tiny.images[:6], tiny.labels[:6]
    atk = obj.attack_for(model, epoch=0)
    x_adv = atk.perturb(x, y, torch.Generator().manual_seed(0))
    noise = atk._noise
    assert noise.shape == (4, *x.shape)

    def direct(xs, average, noise=noise):
        logits = torch.stack([model(xs + noise[i]) for i in range(4)])
        if average == "probs":
            return -torch.log(torch.softmax(logits, 2).mean(0)[torch.arange(6), y])
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(4), reduction="none").view(4, 6).mean(0)

    # the loss the attack ascends is the average-probabilities loss, not the average CE
    objective = atk._objective(x, y, None, torch.Generator().manual_seed(1))  # draws new fixed noise
    loss, _ = objective(x, torch.arange(6))
    torch.testing.assert_close(loss, direct(x, "probs", atk._noise).detach(), rtol=1e-5, atol=1e-6)
    assert (direct(x, "probs") < direct(x, "ce") - 1e-4).all()  # Jensen: the two really differ

    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(direct(xg, "probs").sum(), xg)
    step = 2 * 0.5 / 1  # paper step 2 * eps / T on the normalized gradient
    expected = project(x + step * g / lp_norms(g, "l2").view(-1, 1, 1, 1), x, 0.5, "l2")
    torch.testing.assert_close(x_adv, expected, atol=1e-5, rtol=0)
    assert (lp_norms(x_adv - x, "l2") <= 0.5 + 1e-5).all()


@pytest.mark.parametrize("name,norm,eps", [("pgd_at", "linf", 0.1), ("pgd_at", "l2", 1.0), ("fast_at", "linf", 0.1)])
def test_adversarial_training_sees_points_inside_the_eps_ball(tiny, name, norm, eps):
    rec = _Recorder(_lenet(tiny.info))
    kwargs = dict(eps=eps, norm=norm) if name == "fast_at" else dict(eps=eps, norm=norm, attack_steps=5)
    obj = get_objective(name, **kwargs)
    x, y = tiny.images[:16], tiny.labels[:16]
    rec.train()
    out = obj(rec, x, y, _ctx(0))
    trained_on = [b for training, b in rec.calls if training]
    assert len(trained_on) == 1 and rec.training  # the attack restored train mode
    assert len([b for training, b in rec.calls if not training]) >= 1  # the attack ran in eval mode
    x_train = trained_on[0]
    dist = lp_norms(x_train - x, norm)
    assert (dist <= eps * (1 + 1e-5)).all()
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert float(dist.min()) > 0.5 * eps  # really perturbed, out to the ball
    assert 0.0 <= out.stats["adv_acc"] <= 1.0


def test_objectives_take_all_randomness_from_the_generator(tiny):
    x, y = tiny.images[:8], tiny.labels[:8]
    for name, kw in [("pgd_at", dict(eps=0.1, attack_steps=2)), ("smoothadv", {}), ("consistency", {}),
                     ("trades", dict(eps=0.1, attack_steps=2)), ("stability", {})]:
        losses = []
        for seed in (4, 4, 5):
            torch.manual_seed(seed * 100)  # the global RNG must not matter
            model = _lenet(tiny.info)
            losses.append(float(get_objective(name, **kw)(model, x, y, _ctx(seed)).loss.detach()))
        assert losses[0] == losses[1], name
        assert losses[0] != losses[2], name


def test_smoothadv_resume_continues_the_eps_warmup(tiny, tmp_path):
    obj_kw = dict(noise_sd=0.25, eps=0.6, m_train=2, attack_steps=1, warmup_epochs=3)
    cfg = dict(batch_size=48, lr=0.05, schedule="constant", seed=11)
    full = _lenet(tiny.info)
    h_full = Trainer(full, get_objective("smoothadv", **obj_kw), TrainConfig(epochs=4, **cfg)).fit(tiny)
    assert [round(r["eps"], 6) for r in h_full] == [0.2, 0.4, 0.6, 0.6]

    first = _lenet(tiny.info)
    Trainer(first, get_objective("smoothadv", **obj_kw), TrainConfig(epochs=2, **cfg), meta=META).fit(
        tiny, out_dir=tmp_path)
    resumed = _lenet(tiny.info)
    trainer = Trainer(resumed, get_objective("smoothadv", **obj_kw), TrainConfig(epochs=4, **cfg), meta=META)
    trainer.resume_from(tmp_path / "checkpoint.pt")
    assert trainer.start_epoch == 2
    h_res = trainer.fit(tiny, out_dir=tmp_path)
    assert [r["eps"] for r in h_res] == [r["eps"] for r in h_full]
    assert [r["train_loss"] for r in h_res] == pytest.approx([r["train_loss"] for r in h_full], rel=1e-5)
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6)


# --- noise injection -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pni-w", "pni-a", "pni-wa", "cni"])
def test_noise_injection_is_active_in_eval_and_switchable(tiny, kind):
    model = _lenet(tiny.info, noise_injection=kind).eval()
    plain = _lenet(tiny.info)  # same seed: same conv/linear weights before wrapping
    x = tiny.images[:8]
    assert len(noise_layers(model)) == 4  # 2 conv + 2 linear
    with torch.no_grad():
        a, b = model(x), model(x)
        assert not torch.allclose(a, b)  # eval mode, still noisy
        assert set_noise_injection(model, False) == 4
        c, d = model(x), model(x)
        assert torch.equal(c, d)
        torch.testing.assert_close(c, plain.eval()(x))  # off: exactly the underlying network
        set_noise_injection(model, True)
        assert not torch.allclose(model(x), c)
        # a bound generator makes the noise reproducible
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        with noise_generator(model, g1):
            e = model(x)
        with noise_generator(model, g2):
            f = model(x)
        assert torch.equal(e, f)


def test_pni_weight_noise_has_the_learned_scale():
    torch.manual_seed(0)
    layer = PNI(torch.nn.Linear(50, 40), weight=True)
    with torch.no_grad():
        layer.alpha_w.fill_(0.5)
        w = layer.layer.weight
        noise = torch.stack([layer.noisy_weight() - w for _ in range(200)])
    expected = 0.5 * float(w.detach().std())
    assert abs(float(noise.std()) / expected - 1) < 0.02  # 400k draws: sd within 2 %
    assert abs(float(noise.mean())) < 0.01 * expected * 10


def test_cni_weight_noise_has_low_rank_plus_diagonal_covariance():
    torch.manual_seed(0)
    layer = CNI(torch.nn.Linear(6, 60), rank=2)  # 60 filters: 60 draws per call
    with torch.no_grad():
        layer.diag.copy_(torch.linspace(0.1, 0.3, 6))
        layer.factor.copy_(torch.randn(6, 2) * 0.2)
        w = layer.layer.weight
        samples = torch.cat([layer.noisy_weight() - w for _ in range(1000)])  # rows: draws of one filter
    emp = samples.T @ samples / samples.shape[0]
    cov = float(w.detach().std()) ** 2 * (torch.diag(layer.diag.detach() ** 2) + layer.factor.detach() @ layer.factor.detach().T)
    # each entry's standard error is at most sqrt(2) * max_i cov_ii / sqrt(draws): allow 5 of them
    se = 2 ** 0.5 * float(cov.diagonal().max()) / samples.shape[0] ** 0.5
    torch.testing.assert_close(emp, cov, atol=5 * se, rtol=0)
    assert float((cov - torch.diag(cov.diagonal())).abs().max()) > 20 * se  # really colored (off-diagonal)


def test_noise_injection_checkpoint_round_trip(tiny, tmp_path):
    model = _lenet(tiny.info, noise_injection="cni")
    with torch.no_grad():
        for layer in noise_layers(model):
            layer.diag.mul_(1.7)
    save_checkpoint(tmp_path / "m.pt", model, {**META, "model_options": {"noise_injection": "cni"}})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["model_options"] == {"noise_injection": "cni"}
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    set_noise_injection(model, False)
    set_noise_injection(loaded, False)
    x = tiny.images[:4]
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_noise_injection_only_for_lenet_and_madry_cnn():
    with pytest.raises(ValueError, match="noise_injection"):
        get_model("cifar_resnet20", 10, (3, 32, 32), noise_injection="pni-w")
    with pytest.raises(ValueError, match="allowed: pni-w"):
        get_model("lenet", 10, (1, 28, 28), noise_injection="gauss")


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,message", [
    (["--objective", "pgd_at", "--beta", "3"], "--beta does not apply to --objective pgd_at"),
    (["--objective", "trades", "--eps", "-0.1"], "eps must be a positive"),
    (["--objective", "pgd_at", "--eps", "8"], "did you mean eps/255"),
    (["--objective", "smoothadv", "--m-train", "0"], "m_train must be an integer >= 1"),
    (["--objective", "pgd_at", "--adv-weight", "1.5"], "adv_weight must lie in (0, 1]"),
    (["--objective", "standard", "--noise-sd", "0.5"], "--noise-sd does not apply"),
    (["--objective", "consistency", "--noise-sd", "0"], "noise_sd (pixel units, = the smoothing sigma) must be a positive"),
    (["--objective", "smoothadv", "--warmup-epochs", "0"], "warmup_epochs must be an integer >= 1"),
    (["--objective", "gaussian", "--arch", "cifar_resnet20", "--noise-injection", "cni"], "noise_injection"),
])
def test_cli_rejects_bad_flags_with_exit_code_2(tiny_idx_root, tmp_path, capsys, flags, message):
    argv = ["train", "--data", "mnist", "--root", str(tiny_idx_root), "--out", str(tmp_path / "r"),
            "--threads", "1", "--epochs", "1", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "model.pt").exists()


def test_cli_trains_smoothadv_and_a_noisy_pgd_at_model(tiny_idx_root, tmp_path):
    base = ["train", "--data", "mnist", "--root", str(tiny_idx_root), "--threads", "1", "--batch", "20"]
    out = tmp_path / "sa"
    assert main([*base, "--out", str(out), "--epochs", "2", "--objective", "smoothadv", "--noise-sd", "0.5",
                 "--eps", "0.5", "--m-train", "2", "--attack-steps", "1", "--warmup-epochs", "2"]) == 0
    log = (out / "log.tsv").read_text().splitlines()
    header = log[0].split("\t")
    eps_col = [float(line.split("\t")[header.index("eps")]) for line in log[1:]]
    assert eps_col == [0.25, 0.5]
    _, meta = load_checkpoint(out / "model.pt")
    assert meta["objective"] == "smoothadv" and meta["noise_sd"] == 0.5 and meta["training"]["m_train"] == 2

    out = tmp_path / "pni"
    assert main([*base, "--out", str(out), "--epochs", "1", "--objective", "pgd_at", "--eps", "0.1",
                 "--attack-steps", "2", "--adv-weight", "0.5", "--noise-injection", "pni-wa"]) == 0
    model, meta = load_checkpoint(out / "model.pt")
    assert meta["model_options"] == {"noise_injection": "pni-wa"}
    assert len(noise_layers(model)) == 4
    assert "adv_acc" in (out / "log.tsv").read_text().splitlines()[0]
