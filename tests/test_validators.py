"""Validators on unlabelled target data: their values on known inputs, and checkpoints chosen by them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transferlab.errors import ConfigError
from transferlab.train import train
from transferlab.validators import (
    DIRECTIONS,
    ImportanceWeightedValidation,
    TargetValidators,
    deep_embedded_validation,
    density_ratios,
    entropy,
    information_maximisation,
    soft_neighbourhood_density,
)

from helpers import completed


def _saito_snd(probs: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """The SND authors' neighbor_density, as their repository writes it (the whole n x n matrix)."""
    feature = F.normalize(probs)
    mat = torch.matmul(feature, feature.t()) / t
    mat.masked_fill_(torch.eye(len(mat)).bool(), -1 / t)
    p = F.softmax(mat, dim=-1)
    return torch.mean(-torch.sum(p * torch.log(p + 1e-5), 1))


def test_entropy_and_information_maximisation_on_known_predictions():
    uniform = torch.full((6, 4), 0.25)
    one_hot = torch.eye(4).repeat(2, 1)  # every class predicted, each with certainty
    assert entropy(uniform).mean() == pytest.approx(math.log(4), abs=1e-4)
    assert entropy(one_hot).mean() == pytest.approx(0, abs=1e-3)
    assert information_maximisation(one_hot) == pytest.approx(math.log(4), abs=1e-3)  # confident and diverse
    assert information_maximisation(uniform) == pytest.approx(0, abs=1e-4)  # diverse on average, never confident
    collapsed = torch.eye(4)[[0] * 8]
    assert information_maximisation(collapsed) == pytest.approx(0, abs=1e-3)  # confident, one class: entropy misses it


def test_snd_is_the_authors_formula_and_is_high_on_clustered_predictions():
    torch.manual_seed(0)
    scattered = torch.distributions.Dirichlet(torch.full((5,), 0.3)).sample((60,))  # confident, no neighbourhoods
    clustered = torch.eye(5)[torch.arange(60) % 5] * 0.99 + 0.002 + 0.001 * torch.rand(60, 5)  # 5 tight groups
    for probs in (scattered, clustered):  # in blocks of 7 rows: the same as the whole matrix at once
        assert soft_neighbourhood_density(probs, chunk=7) == pytest.approx(float(_saito_snd(probs)), abs=1e-5)
    assert soft_neighbourhood_density(clustered) == pytest.approx(math.log(11), abs=0.01)  # 11 equal neighbours
    assert soft_neighbourhood_density(clustered) > soft_neighbourhood_density(scattered) + 0.3
    # Its known blind spot: predictions that are all alike (uniform) are one dense neighbourhood too.
    assert soft_neighbourhood_density(torch.full((60, 5), 0.2)) == pytest.approx(math.log(59), abs=0.01)


def test_the_metric_scores_every_batch_of_the_epoch_at_once():
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((40,))
    metric = TargetValidators()
    for part in probs.split(9):
        metric.update(part)
    values = metric.compute()
    assert values["target/snd"] == pytest.approx(float(_saito_snd(probs)), abs=1e-5)
    assert values["target/im"] == pytest.approx(float(information_maximisation(probs)), abs=1e-6)
    assert set(values) == set(DIRECTIONS) - {"target/dev"}


def _authors_dev_risk(weight, error):
    """get_dev_risk of the DEV authors' repository (numpy, one column each)."""
    import numpy as np

    weighted_error = weight * error
    cov = np.cov(np.concatenate((weighted_error, weight), axis=1), rowvar=False)[0][1]
    eta = -cov / np.var(weight, ddof=1)
    return np.mean(weighted_error) + eta * np.mean(weight) - eta


def test_dev_estimates_the_target_risk_from_source_losses_under_a_known_shift():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(20000, 1, generator=generator)
    target = torch.randn(20000, 1, generator=generator) + 1
    losses = source[:, 0].double() ** 2  # E over the source: 1; over the target: 1 + 1 = 2
    weights = density_ratios(source, target)  # the true ratio: exp(x - 1/2)
    assert weights.mean() == pytest.approx(1, abs=0.05)
    assert torch.corrcoef(torch.stack([weights, torch.exp(source[:, 0].double() - 0.5)]))[0, 1] > 0.99
    assert losses.mean() == pytest.approx(1, abs=0.05)
    assert deep_embedded_validation(losses, weights) == pytest.approx(2, abs=0.25)
    same = density_ratios(source, torch.randn(20000, 1, generator=generator))  # no shift: every weight near 1
    assert (same - 1).abs().max() < 0.1
    assert deep_embedded_validation(losses, same) == pytest.approx(float(losses.mean()), abs=0.05)
    small = (weights[:50], losses[:50])  # the control variate as the authors' code computes it
    expected = _authors_dev_risk(small[0].numpy()[:, None], small[1].numpy()[:, None])
    assert deep_embedded_validation(small[1], small[0]) == pytest.approx(float(expected), rel=1e-9)


def test_the_dev_metric_scores_the_whole_epoch_and_is_nan_with_too_few_examples_or_nan_features():
    generator = torch.Generator().manual_seed(1)
    source, target = torch.randn(60, 4, generator=generator), torch.randn(50, 4, generator=generator) + 0.5
    losses = torch.rand(60, generator=generator)
    metric = ImportanceWeightedValidation()
    for features, loss in zip(source.split(16), losses.split(16)):
        metric.update(features, loss)
    for features in target.split(16):
        metric.update(features)
    whole = deep_embedded_validation(losses.double(), density_ratios(source, target))
    assert metric.compute() == pytest.approx(float(whole), abs=1e-6)
    metric = ImportanceWeightedValidation()
    metric.update(source[:3], losses[:3])
    metric.update(target)
    assert math.isnan(metric.compute())
    metric = ImportanceWeightedValidation()  # a diverged model's features: NaN, not scikit-learn's error
    metric.update(source * float("nan"), losses)
    metric.update(target)
    assert math.isnan(metric.compute())


def _unlabelled_run(make_cfg, folders: Path, *overrides: str) -> dict:
    folder = ["data=folder", "data.classes=null", f"data.root={folders / 'digits'}", "data.augment=none"]
    return train(make_cfg(*folder, f"data.target.root={folders / 'unlabelled'}", *overrides))


@pytest.mark.parametrize("monitor", ["target/snd", "target/entropy", "target/dev"])
def test_an_unlabelled_target_chooses_the_checkpoint_by_a_validator(make_cfg, domain_folders, monitor):
    mode = DIRECTIONS[monitor]
    summary = _unlabelled_run(
        make_cfg, domain_folders, "adapt=mcc", "trainer.max_epochs=3", f"monitor={monitor}", f"monitor_mode={mode}"
    )
    assert completed(summary)
    assert summary["model_selection"] == {"monitor": monitor, "on_target_labels": False}
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    scores = [float(r[monitor]) for r in rows]
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) == 3  # a value every epoch, changing
    best = (max if mode == "max" else min)(range(3), key=scores.__getitem__)
    assert summary["best_epoch"] == best
    assert not any(k.startswith("target/") and k not in DIRECTIONS for k in summary["final"])  # no labels to score


def test_a_validator_monitored_the_wrong_way_round_is_one_line(make_cfg, domain_folders):
    with pytest.raises(ConfigError, match=r"^monitor_mode=max: target/entropy is better lower; set monitor_mode=min$"):
        _unlabelled_run(make_cfg, domain_folders, "adapt=mcc", "monitor=target/entropy", "monitor_mode=max")
