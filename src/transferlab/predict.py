"""transferlab-predict: label a folder of images into a CSV, from a checkpoint alone."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from transferlab.cli import cli_main, conf_dir, run_task
from transferlab.errors import ConfigError
from transferlab.run_folder import write_atomic

log = logging.getLogger("transferlab")


def predict(cfg: DictConfig) -> Path:
    """Write ``path,class,probability`` (the top class) for every image under ``cfg.input_dir``."""
    import numpy as np
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from transferlab.data.sources import IMG_EXTENSIONS, LabeledImages, Split, find_unreadable
    from transferlab.data.transforms import build_transform
    from transferlab.module import load_module

    if cfg.bad_files not in ("skip", "error"):
        raise ConfigError(f"bad_files={cfg.bad_files}: choose skip or error")
    root = Path(cfg.input_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"input_dir={cfg.input_dir}: folder not found; give a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    bad = find_unreadable(paths)
    if bad and cfg.bad_files == "error":
        first = next(iter(bad))
        raise ConfigError(f"bad_files=error: {first} is not a readable image ({bad[first]}); use bad_files=skip")
    if bad:
        log.warning("skipped %d unreadable files, e.g. %s", len(bad), next(iter(bad)))
        paths = [p for p in paths if p not in bad]
    if not paths:
        raise ConfigError(f"input_dir={cfg.input_dir}: no image files ({', '.join(IMG_EXTENSIONS)}) found")

    module = load_module(cfg.ckpt_path)
    transform = build_transform(module.metadata["data_config"], "none", train=False)
    images = LabeledImages(Split(paths, np.zeros(len(paths), dtype=int)), transform)
    loader = DataLoader(images, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    trainer = pl.Trainer(**cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    probs = torch.cat(trainer.predict(module, dataloaders=loader))

    top_prob, top_class = probs.max(dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class", "probability"])
    for path, index, prob in zip(paths, top_class.tolist(), top_prob.tolist()):
        writer.writerow([str(path), module.class_names[index], f"{prob:.6f}"])
    output = Path(cfg.output)
    write_atomic(output, buffer.getvalue())
    print(f"predicted {len(paths)} images -> {output}")
    return output


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


main = cli_main(_hydra_main)

if __name__ == "__main__":
    main()
