"""What eval, predict and export share: the checkpoint they read, its data, the inputs they label and the Trainer
that runs them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")
CKPT_EXAMPLE = "ckpt_path=outputs/train/<run>/checkpoints/best.ckpt"


def checkpoint_path(cfg: DictConfig, command: str) -> str:
    """The checkpoint file ``cfg.ckpt_path`` names, or a one-line ConfigError naming ``ckpt_path``."""
    from transferlab.run_folder import checkpoint_file

    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError(f"ckpt_path is required: {command} {CKPT_EXAMPLE}")
    return checkpoint_file(cfg.ckpt_path, f"give a checkpoint file, e.g. {CKPT_EXAMPLE}")


def checkpoint_data(module, changes: dict[str, Any], run_dir: str | Path):
    """The data module of the data ``module``'s checkpoint was trained on (its saved ``data`` config with
    ``changes``), set up with the checkpoint's input preparation and no augmentation."""
    from transferlab.cli import instantiate
    from transferlab.data.target import split_options

    # A split of the data the model was trained on (to score a target domain, point data.root at it).
    options, _, _ = split_options({**module.metadata["data"], **changes})
    data = {
        **options,
        # The saved inputs already hold the input size, mean and std the model was trained with.
        "input_size": None,
        "mean": None,
        "std": None,
        "augment": "none",  # so that split=train is scored with the eval transform too
        "output_dir": str(run_dir),  # where the data module lists skipped bad files
    }
    datamodule = instantiate(data, inputs=module.inputs)
    if datamodule.class_names != module.class_names:
        raise ConfigError(
            f"data: the classes {datamodule.class_names} differ from the checkpoint's {module.class_names}; "
            "point data.root at images of the classes the model was trained on"
        )
    return datamodule


def inference_trainer(trainer: DictConfig, run_dir: str | Path):
    """A Trainer from the ``trainer.`` keyword arguments that only runs a model: no logger, checkpoints or bars."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from transferlab.cli import first_line
    from transferlab.config import check_accelerator

    check_accelerator(str(trainer.get("accelerator")))
    kwargs: dict[str, Any] = OmegaConf.to_container(trainer, resolve=True)  # type: ignore[assignment]
    try:
        return pl.Trainer(
            **kwargs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(run_dir),
        )
    except (TypeError, ValueError, MisconfigurationException) as e:
        raise ConfigError(
            f"trainer: pytorch_lightning.Trainer refused its options ({first_line(e)}); check the trainer. options"
        ) from None


def image_paths(folder: str, policy: str, run_dir: str | Path) -> list[Path]:
    """The readable image files under ``folder`` (``input``), sorted; unreadable ones per ``policy``
    (``bad_files``)."""
    from transferlab.data.images import IMG_EXTENSIONS, image_files, screen

    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"input={folder}: folder not found; give a folder of images")
    paths = image_files(root)
    bad, skipped = screen(paths, policy, "bad_files", folder, "bad_files=error", Path(run_dir))
    if skipped:
        log.warning(skipped)
        paths = [p for p in paths if p not in bad]
    if not paths:
        note = f"; {len(bad)} unreadable file(s) skipped" if bad else ""
        raise ConfigError(f"input={folder}: no image files ({', '.join(IMG_EXTENSIONS)}) found{note}")
    return paths


def input_dataset(cfg: DictConfig, inputs, run_dir: str | Path) -> tuple[list[str], Any]:
    """(names, an unlabelled dataset) of what ``cfg.input`` holds, prepared by ``inputs`` as for evaluation: the
    readable images under a folder (``bad_files``), sorted, named by path; or the texts of a file or folder
    (``text_column``), in order, named by row."""
    import numpy as np

    from transferlab.data.sources import LabeledImages, Split

    if inputs.kind == "text":
        from transferlab.data.texts import LabeledTexts, read_inputs

        rows, texts = read_inputs(str(cfg.input), str(cfg.text_column))
        return rows, LabeledTexts(Split(texts, np.zeros(len(texts), dtype=np.int64)), inputs.transform("none", False))
    paths = image_paths(cfg.input, cfg.bad_files, run_dir)
    # LabeledImages loads each file as RGB (palette GIFs too) as training did; the labels are placeholders.
    labels = np.zeros(len(paths), dtype=np.int64)
    return [str(p) for p in paths], LabeledImages(Split(paths, labels), inputs.transform("none", train=False))
