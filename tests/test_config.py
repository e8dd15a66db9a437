"""Every config group composes; the CLI prints configs and help; the composed config is validated."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from transferlab.cli import conf_dir
from transferlab.config import validate
from transferlab.errors import ConfigError
from transferlab.overrides import check_group_choices

from helpers import compose_config, run_cli

CONF = Path(conf_dir())
# Options that need a value the user must give.
REQUIRED = {
    "backbone/custom": ["backbone.model._target_=cifar_resnet.resnet20"],
    "data/folder": ["data.root=/tmp"],
    "data/text": ["data.root=/tmp"],
    # Adaptation needs target images: the offline pair.
    **{f"adapt/{p.stem}": ["data=digits_m"] for p in (CONF / "adapt").glob("*.yaml") if p.stem != "none"},
    # SHOT starts from a source run's checkpoint: validate checks that the file exists (reading it is the run's).
    "adapt/shot": ["data=digits_m", f"adapt.source_ckpt={__file__}"],
    # These read the digits_source run's checkpoint, which the quickstart makes first.
    "experiment/digits_finetune": ["backbone.weights=null"],
    "experiment/digits_frozen": ["backbone.weights=null"],
}
OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONF.iterdir()
    if group.is_dir() and group.name != "hydra"
    for option in group.glob("*.yaml")
)


def test_groups_cover_the_design():
    groups = {g.name for g in CONF.iterdir() if g.is_dir()}
    expected = {
        "backbone",
        "head",
        "data",
        "schedule",
        "adapt",
        "optimizer",
        "lr_scheduler",
        "trainer",
        "logger",
        "callbacks",
        "experiment",
        "paths",
        "hydra",
    }
    assert expected <= groups
    assert {"train.yaml", "eval.yaml", "predict.yaml"} <= {p.name for p in CONF.glob("*.yaml")}


ADDED = {"sweep", "cluster"}  # groups outside train.yaml's defaults, selected with +group=option


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes(group, option):
    prefix = "+" if group in ADDED else ""
    overrides = [f"{prefix}{group}={option}", "paths.output_dir=/tmp/x", *REQUIRED.get(f"{group}/{option}", [])]
    cfg = compose_config(*overrides)
    # every interpolation resolves (the cluster preset's ${hydra:launcher...} only inside a launched job)
    assert OmegaConf.to_container(cfg, resolve=group != "cluster")
    # data/folder points at a folder with no classes; the cluster preset resolves only inside a SLURM job
    if group not in ("data", "cluster"):
        validate(cfg)


def test_defaults_are_a_valid_offline_run():
    cfg = compose_config("paths.output_dir=/tmp/x")
    validate(cfg)
    assert cfg.backbone.pretrained is False and cfg.data.source == "digits"


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-1e-3", "optimizer.lr"),
        ("optimizer.lr=abc", "optimizer.lr"),
        ("schedule.backbone_lr_mult=0", "schedule.backbone_lr_mult"),
        ("schedule.freeze_depth=-1", "schedule.freeze_depth"),
        ("schedule.freeze_depth=some", "schedule.freeze_depth"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("trainer.precision=8-mixed", "trainer.precision"),
        ("data.batch_size=0", "data.batch_size"),
        ("backbone.weights=/no/such/file.pth", "backbone.weights"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path"),
        ("label_smoothing=1.5", "label_smoothing"),
        ("monitor_mode=up", "monitor_mode"),
        # The optimizer and scheduler are partial targets called mid-run: checked up front all the same.
        ("optimizer.weight_decay=-1", "optimizer: torch.optim.AdamW refused its options (Invalid weight_decay"),
        ("optimizer=sgd optimizer.momentum=-0.5", "optimizer: torch.optim.SGD refused its options (Invalid momentum"),
        ("lr_scheduler.min_lr_ratio=-1", "lr_scheduler.min_lr_ratio=-1: use a number in [0, 1]"),
        ("lr_scheduler.warmup_steps=-5", "lr_scheduler.warmup_steps=-5"),
        ("lr_scheduler=step lr_scheduler.milestones=[0.8,0.2]", "lr_scheduler.milestones=[0.8, 0.2]"),
        ("lr_scheduler=step lr_scheduler.gamma=0", "lr_scheduler.gamma=0"),
        ("data=digits_m adapt=dann adapt.adversarial_weight=1e30", "adapt.adversarial_weight=1e+30: use a number in"),
        # An int too large for a float: checked as a number, not an OverflowError.
        (
            f"data=digits_m adapt=dann adapt.adversarial_weight=1{'0' * 400}",
            f"adapt.adversarial_weight=1{'0' * 400}: use",
        ),
    ],
)
def test_validation_names_the_option(override, option):
    cfg = compose_config(*override.split(), "paths.output_dir=/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(option) and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["+optimizer.lrr=1"], "+optimizer.lrr=1: torch.optim.AdamW takes no option lrr; did you mean lr?"),
        (["+trainer.fast_dev_runn=1"], "+trainer.fast_dev_runn=1: pytorch_lightning.Trainer takes no option"),
        (["hydra.sweeper.foo=1"], "hydra.sweeper.foo: no such option in the config; check its spelling"),
        (["+sweep=optuna", "hydra.sweeper.n_trials=abc"], "hydra.sweeper.n_trials=abc: Value 'abc' of type 'str'"),
    ],
)
def test_overrides_of_partial_targets_and_of_hydra_are_checked(overrides, line):
    from transferlab.overrides import check_overrides

    with pytest.raises(ConfigError) as err:
        check_overrides([*overrides, "hydra.run.dir=/tmp/x"], CONF, "train")
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
    check_overrides(["+optimizer.amsgrad=true", "+sweep=optuna", "hydra.sweeper.n_trials=3"], CONF, "train")


def test_a_misspelt_target_is_one_line_with_the_name_meant():
    from transferlab.cli import instantiate

    cfg = compose_config(
        "backbone=custom",
        "backbone.name=null",
        "backbone.model._target_=torchvision.models.resnett18",
        "paths.output_dir=/tmp/x",
    )
    with pytest.raises(
        ConfigError,
        match=r"^backbone.model._target_=torchvision.models.resnett18: torchvision.models "
        r"has no resnett18; did you mean torchvision.models.resnet18\?$",
    ):
        instantiate(cfg.backbone)


def test_missing_required_value_is_named():
    cfg = compose_config("data=folder", "paths.output_dir=/tmp/x")
    with pytest.raises(ConfigError, match=r"^data.root is required"):
        validate(cfg)


def test_unknown_group_option_is_one_line():
    with pytest.raises(ConfigError, match=r"^backbone=timmm: unknown option; choose one of custom, hf, timm$"):
        check_group_choices(["backbone=timmm"], CONF)
    with pytest.raises(ConfigError, match=r"^schedule=cyclic: unknown option"):
        check_group_choices(["-m", "schedule=full,cyclic"], CONF)
    check_group_choices(["schedule=full,frozen", "logger=[csv,wandb]", "optimizer.lr=1"], CONF)


@pytest.mark.slow
def test_cli_prints_config_and_help():
    job = run_cli("transferlab-train", "--cfg", "job", "backbone.name=convnext_atto", check=True)
    assert "name: convnext_atto" in job.stdout and "_target_: transferlab.backbones.create_backbone" in job.stdout
    help_text = run_cli("transferlab-train", "--help", check=True).stdout
    for group in ("backbone", "head", "data", "schedule", "optimizer", "trainer", "experiment"):
        assert f"{group}:" in help_text


@pytest.mark.slow
def test_cli_unknown_option_exits_with_one_line(tmp_path):
    result = run_cli("transferlab-train", "head=conv", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: head=conv: unknown option; choose one of linear, mlp"]
    assert not (tmp_path / "run").exists()
