"""transferlab-predict: label a folder of images into a CSV, from a checkpoint alone; summary.json in its folder."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, job_overrides, run_task
from transferlab.data.images import BAD_FILE_POLICIES
from transferlab.errors import ConfigError
from transferlab.inference import checkpoint_path, image_paths, inference_trainer
from transferlab.run_folder import claim, locked, recorded, write_atomic

log = logging.getLogger("transferlab")
COLUMNS = ("path", "class", "probability")


def predict(cfg: DictConfig) -> Path:
    """Write ``path,class,probability`` (the top class) for every readable image under ``cfg.input_dir``.

    Only the checkpoint is needed: the model, its class names and the eval transform of the data config it was
    trained with. Paths are written as found under ``input_dir`` as given (relative stays relative), sorted.
    The run folder is a run of its own (summary.json says how it ended); an existing ``output`` is never replaced
    unless ``overwrite`` is set, and never when it is one of the inputs.
    """
    run_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {
        "status": "running",
        "task": "predict",
        "run_dir": str(run_dir),
        "ckpt_path": None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path,
        "input_dir": None if OmegaConf.is_missing(cfg, "input_dir") else cfg.input_dir,
        "overrides": job_overrides(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    claim(run_dir, "predict", resuming=False, overwrite=bool(cfg.overwrite))
    with locked(run_dir), recorded(run_dir, summary):
        summary.update(_predict(cfg, run_dir))
    print(f"predicted {summary['n']} images -> {summary['output']}")
    return Path(summary["output"])


def _predict(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.bad_files not in BAD_FILE_POLICIES:
        raise ConfigError(f"bad_files={cfg.bad_files}: choose one of {', '.join(BAD_FILE_POLICIES)}")
    ckpt_path = checkpoint_path(cfg, "transferlab-predict")
    if OmegaConf.is_missing(cfg, "input_dir") or not cfg.input_dir:
        raise ConfigError("input_dir is required: transferlab-predict ckpt_path=... input_dir=PATH/TO/IMAGES")
    output = Path(cfg.output).expanduser()
    target = output.resolve()
    if target == Path(ckpt_path).resolve() or (
        target.exists() and target.is_relative_to(Path(cfg.input_dir).expanduser().resolve())
    ):
        raise ConfigError(f"output={cfg.output}: is one of the inputs; write the predictions to a new file")
    if output.exists() and not cfg.overwrite:
        raise ConfigError(
            f"output={cfg.output}: exists (an earlier prediction?); choose a new file or set overwrite=true"
        )
    paths = image_paths(cfg.input_dir, cfg.bad_files, run_dir)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from transferlab.data.sources import LabeledImages, Split
    from transferlab.module import load_module

    module = load_module(ckpt_path)
    transform = module.inputs.transform("none", train=False)
    # LabeledImages loads each file as RGB (palette GIFs too) as training did; the labels are placeholders.
    images = LabeledImages(Split(paths, np.zeros(len(paths), dtype=np.int64)), transform)
    loader = DataLoader(
        images, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=module.inputs.collate
    )
    trainer = inference_trainer(cfg.trainer, run_dir)
    probs = torch.cat([p.float().cpu() for p in trainer.predict(module, dataloaders=loader)])

    top_prob, top_class = probs.max(dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for path, index, prob in zip(paths, top_class.tolist(), top_prob.tolist()):
        writer.writerow([str(path), module.class_names[index], f"{prob:.6f}"])
    write_atomic(output, buffer.getvalue())
    return {"n": len(paths), "output": str(output), "class_names": module.class_names}


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


main = cli_main(_hydra_main, "predict")

if __name__ == "__main__":
    main()
