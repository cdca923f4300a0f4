import pickle
import zipfile

import pytest
import torch

from smoothguard.models import MODELS, CheckpointError, Normalize, get_model, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name,shape", [
    ("lenet", (1, 28, 28)), ("madry_cnn", (1, 28, 28)), ("lenet", (3, 32, 32)),
    ("cifar_resnet20", (3, 32, 32)), ("cifar_resnet110", (3, 32, 32)),
])
def test_models_map_unit_images_to_logits_deterministically(name, shape):
    model = get_model(name, 7, shape, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (3, 7)
    assert torch.equal(a, b)
    assert isinstance(model[0], Normalize)


def test_all_registered_models_are_covered():
    assert set(MODELS) == {"lenet", "madry_cnn", "cifar_resnet20", "cifar_resnet110"}


def test_normalize_is_per_channel():
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    x = torch.rand(2, 3, 4, 4)
    out = norm(x)
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)]):
        torch.testing.assert_close(out[:, c], (x[:, c] - m) / s)


def test_lenet_has_the_literature_shape():
    net = get_model("lenet", 10, (1, 28, 28))[1]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert net.fc1.in_features == 800 and net.fc1.out_features == 500


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="allowed: lenet"):
        get_model("vgg", 10, (1, 28, 28))
    with pytest.raises(ValueError, match="mean/std need 3"):
        get_model("lenet", 10, (3, 32, 32), mean=[0.5], std=[0.5])


def _meta():
    return {"arch": "lenet", "num_classes": 10, "in_shape": [1, 28, 28], "mean": [0.3], "std": [0.35],
            "dataset": "fashion-mnist", "objective": "gaussian", "noise_sd": 0.25, "seed": 3}


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = get_model("lenet", 10, (1, 28, 28), [0.3], [0.35]).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, _meta())
    loaded, meta = load_checkpoint(path)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["noise_sd"] == 0.25 and meta["seed"] == 3 and "smoothguard_version" in meta
    assert not loaded.training


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "smoothguard-checkpoint/1", "meta_json": "{}", "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "p.pt"
    with open(path, "wb") as fh:
        pickle.dump({"a": 1}, fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_or_missing_checkpoint_errors(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a smoothguard checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "trunc.pt")


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    model = get_model("lenet", 10, (1, 28, 28))
    save_checkpoint(tmp_path / "m.pt", model, _meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert zipfile.is_zipfile(tmp_path / "m.pt")
