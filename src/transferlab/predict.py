"""transferlab-predict: label a folder of images into a CSV, from a checkpoint alone; summary.json in its folder."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, job_summary, run_task
from transferlab.data.images import BAD_FILE_POLICIES
from transferlab.errors import ConfigError
from transferlab.inference import checkpoint_path, image_paths, inference_trainer
from transferlab.run_folder import claim, locked, recorded, write_atomic

log = logging.getLogger("transferlab")


def predict(cfg: DictConfig) -> Path:
    """Label every input of ``cfg.input`` into a CSV: for images, ``path,class,probability`` (the top class) of
    every readable image under the folder, sorted, paths as found (relative stays relative); for texts,
    ``row,class,probability`` and each class's probability, one row per text in the input's order.

    Only the checkpoint is needed: the model, its class names and how its inputs are prepared. The run folder is
    a run of its own (summary.json says how it ended); an existing ``output`` is never replaced unless
    ``overwrite`` is set, and never when it is one of the inputs.
    """
    run_dir = Path(cfg.paths.output_dir)
    summary = job_summary("predict", cfg, "ckpt_path", "input")
    claim(run_dir, "predict", resuming=False, overwrite=bool(cfg.overwrite))
    with locked(run_dir), recorded(run_dir, summary):
        summary.update(_predict(cfg, run_dir))
    print(f"predicted {summary['n']} inputs -> {summary['output']}")
    return Path(summary["output"])


def _predict(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.bad_files not in BAD_FILE_POLICIES:
        raise ConfigError(f"bad_files={cfg.bad_files}: choose one of {', '.join(BAD_FILE_POLICIES)}")
    ckpt_path = checkpoint_path(cfg, "transferlab-predict")
    if OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise ConfigError(
            "input is required: transferlab-predict ckpt_path=... input=PATH (a folder of images, a text file)"
        )
    source = Path(str(cfg.input)).expanduser()
    output = Path(cfg.output).expanduser()
    target = output.resolve()
    inside = target.is_relative_to(source.resolve()) if source.is_dir() else target == source.resolve()
    if target == Path(ckpt_path).resolve() or (target.exists() and inside):
        raise ConfigError(f"output={cfg.output}: is one of the inputs; write the predictions to a new file")
    if output.exists() and not cfg.overwrite:
        raise ConfigError(
            f"output={cfg.output}: exists (an earlier prediction?); choose a new file or set overwrite=true"
        )

    import torch
    from torch.utils.data import DataLoader

    from transferlab.module import load_module

    module = load_module(ckpt_path)
    names, dataset = INPUTS[module.inputs.kind](cfg, module, run_dir)
    loader = DataLoader(
        dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=module.inputs.collate
    )
    trainer = inference_trainer(cfg.trainer, run_dir)
    probs = torch.cat([p.float().cpu() for p in trainer.predict(module, dataloaders=loader)])

    top_prob, top_class = probs.max(dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    every = module.inputs.kind != "image"  # the image CSV keeps its three columns
    writer.writerow([*COLUMNS[module.inputs.kind], *(module.class_names if every else ())])
    for name, index, prob, row in zip(names, top_class.tolist(), top_prob.tolist(), probs.tolist()):
        writer.writerow([name, module.class_names[index], f"{prob:.6f}", *(f"{p:.6f}" for p in row if every)])
    write_atomic(output, buffer.getvalue())
    return {"n": len(names), "output": str(output), "class_names": module.class_names}


def _images(cfg: DictConfig, module, run_dir: Path):
    import numpy as np

    from transferlab.data.sources import LabeledImages, Split

    paths = image_paths(cfg.input, cfg.bad_files, run_dir)
    # LabeledImages loads each file as RGB (palette GIFs too) as training did; the labels are placeholders.
    labels = np.zeros(len(paths), dtype=np.int64)
    return [str(p) for p in paths], LabeledImages(Split(paths, labels), module.inputs.transform("none", train=False))


def _texts(cfg: DictConfig, module, run_dir: Path):
    import numpy as np

    from transferlab.data.sources import Split
    from transferlab.data.texts import LabeledTexts, read_inputs

    rows, texts = read_inputs(str(cfg.input), str(cfg.text_column))
    labels = np.zeros(len(texts), dtype=np.int64)
    return rows, LabeledTexts(Split(texts, labels), module.inputs.transform("none", train=False))


INPUTS = {"image": _images, "text": _texts}  # a backbone's input kind -> what predict reads for it
COLUMNS = {"image": ("path", "class", "probability"), "text": ("row", "class", "probability")}


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


main = cli_main(_hydra_main, "predict")

if __name__ == "__main__":
    main()
