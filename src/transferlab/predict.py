"""transferlab-predict: label images or texts into a CSV, from a checkpoint or an export alone; summary.json in its
folder."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, run_job, run_task
from transferlab.data.images import BAD_FILE_POLICIES
from transferlab.errors import ConfigError, is_number
from transferlab.inference import checkpoint_path, inference_trainer, input_dataset
from transferlab.run_folder import write_atomic

log = logging.getLogger("transferlab")


def predict(cfg: DictConfig) -> Path:
    """Label every input of ``cfg.input`` into a CSV: for images, ``path,class,probability`` (the top class) of
    every readable image under the folder, sorted, paths as found (relative stays relative); for texts,
    ``row,class,probability`` and each class's probability, one row per text in the input's order.

    Only the checkpoint is needed: the model, its class names and how its inputs are prepared; or, with
    ``model``, a file of transferlab-export, run by its runtime (onnxruntime for ONNX) with the same listing,
    screening, order and columns. The run folder is a run of its own (summary.json says how it ended); an existing
    ``output`` is never replaced unless ``overwrite`` is set, and never when it is one of the inputs.
    """
    summary = run_job("predict", cfg, _predict, "ckpt_path", "model", "input")
    print(f"predicted {summary['n']} inputs -> {summary['output']}")
    return Path(summary["output"])


def _predict(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.bad_files not in BAD_FILE_POLICIES:
        raise ConfigError(f"bad_files={cfg.bad_files}: choose one of {', '.join(BAD_FILE_POLICIES)}")
    for option, least in (("batch_size", 1), ("num_workers", 0)):
        value = cfg[option]
        if not is_number(value, whole=True) or value < least:
            raise ConfigError(f"{option}={value}: use a whole number >= {least}, e.g. {option}={least}")
    if cfg.model and not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.ckpt_path:
        raise ConfigError(f"model={cfg.model}: give ckpt_path (a checkpoint) or model (an export), not both")
    model_path = str(cfg.model) if cfg.model else checkpoint_path(cfg, "transferlab-predict")
    if OmegaConf.is_missing(cfg, "input") or not cfg.input:
        raise ConfigError(
            "input is required: transferlab-predict ckpt_path=... input=PATH (a folder of images, a text file)"
        )
    source = Path(str(cfg.input)).expanduser()
    output = Path(cfg.output).expanduser()
    target = output.resolve()
    inside = target.is_relative_to(source.resolve()) if source.is_dir() else target == source.resolve()
    model_files = {Path(model_path).resolve()}
    if cfg.model:  # an export is read with the files beside it
        from transferlab.exported import info_path, tokenizer_path

        model_files |= {info_path(Path(model_path).resolve()), tokenizer_path(Path(model_path).resolve())}
    if target in model_files or (target.exists() and inside):
        raise ConfigError(f"output={cfg.output}: is one of the inputs; write the predictions to a new file")
    if output.exists() and not cfg.overwrite:
        raise ConfigError(
            f"output={cfg.output}: exists (an earlier prediction?); choose a new file or set overwrite=true"
        )

    import torch
    from torch.utils.data import DataLoader

    if cfg.model:
        from transferlab.exported import load_exported

        model = load_exported(model_path)
    else:
        from transferlab.module import load_module

        model = load_module(model_path)
    names, dataset = input_dataset(cfg, model.inputs, run_dir)
    loader = DataLoader(
        dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=model.inputs.collate
    )
    if cfg.model:  # the export's runtime, on the CPU
        probs = torch.cat([model.probabilities(batch.inputs) for batch in loader])
    else:
        trainer = inference_trainer(cfg.trainer, run_dir)
        probs = torch.cat([p.float().cpu() for p in trainer.predict(model, dataloaders=loader)])

    top_prob, top_class = probs.max(dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    every = model.inputs.kind != "image"  # the image CSV keeps its three columns
    writer.writerow([*COLUMNS[model.inputs.kind], *(model.class_names if every else ())])
    for name, index, prob, row in zip(names, top_class.tolist(), top_prob.tolist(), probs.tolist()):
        writer.writerow([name, model.class_names[index], f"{prob:.6f}", *(f"{p:.6f}" for p in row if every)])
    write_atomic(output, buffer.getvalue())
    return {"n": len(names), "output": str(output), "class_names": model.class_names}


COLUMNS = {"image": ("path", "class", "probability"), "text": ("row", "class", "probability")}


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


main = cli_main(_hydra_main, "predict")

if __name__ == "__main__":
    main()
