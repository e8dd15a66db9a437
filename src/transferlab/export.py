"""transferlab-export: a checkpoint as an ONNX file or a torch.export program for serving, checked against PyTorch.

What is exported is the model a caller serves: the backbone and the head, without what only training needs (a
domain discriminator), with a dynamic batch dimension (and sequence length for text). Every export is checked
before it is kept: the ONNX checker, then its runtime's logits against PyTorch's on real inputs (the first alone,
then all of them in batches of 7) within ``atol``, and the same top class on every input. The file lands with the
JSON beside it (:mod:`transferlab.exported`) or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from transferlab.cli import cli_main, conf_dir, first_line, run_job, run_task
from transferlab.errors import ConfigError, is_number
from transferlab.exported import FORMATS, info_path, input_names, load_exported, tokenizer_path
from transferlab.run_folder import versions

log = logging.getLogger("transferlab")
OPSET = 17  # what current runtimes (onnxruntime, TensorRT, OpenVINO) all read; timm exports at 17 too
PARITY_BATCH = 7
MAX_BATCH = 1 << 16  # torch.export's bound on the dynamic batch dimension


class Serving(nn.Module):
    """``module``'s backbone and head as one network from a batch's inputs (images; or token ids and attention
    mask) to logits (batch, classes); a binary head's logit becomes the two columns 0 and the logit, so that a
    softmax gives both classes' probabilities."""

    def __init__(self, module):
        super().__init__()
        self.backbone, self.head, self.inputs = module.backbone, module.head, module.inputs
        self.binary = module.binary

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images; or token ids and their attention mask."""
        if attention_mask is not None:
            inputs = {"input_ids": inputs, "attention_mask": attention_mask}
        logits = self.head(self.backbone(self.inputs.prepare(inputs)))
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if self.binary else logits


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` in ``cfg.format``; the run folder's summary.json says how it
    ended and holds the parity figures that the export's JSON holds too."""
    summary = run_job("export", cfg, _export, "ckpt_path", "format")
    parity = summary["parity"]
    print(
        f"exported {cfg.format} -> {summary['output']} (max |logit difference| {parity['max_abs_diff']:.2e}, "
        f"top class agrees on {parity['agree']}/{parity['n']} inputs)"
    )
    return Path(summary["output"])


def _export(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from transferlab.inference import checkpoint_path
    from transferlab.module import load_module

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    atol = cfg.atol
    if not is_number(atol) or atol <= 0:
        raise ConfigError(f"atol={atol}: use a number > 0, e.g. atol=1e-4")
    ckpt_path = checkpoint_path(cfg, "transferlab-export")
    output = _output(cfg, fmt, run_dir, ckpt_path)

    module = load_module(ckpt_path)
    inputs_from, dataset = _parity_inputs(cfg, module, run_dir)
    serving = Serving(module).eval()
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        staged = staging / output.name
        example = _example(module, dataset)
        if fmt == "onnx":
            _to_onnx(serving, example, staged)
        else:
            _to_torch_export(serving, example, staged)
        info = _info(module, fmt, ckpt_path)
        _write_beside(staged, info, module)
        parity = _parity(serving, load_exported(staged, option="output"), module, dataset, float(atol), fmt)
        info["parity"] = {**parity, "inputs": inputs_from}
        _write_info(staged, info)
        files = [p.name for p in sorted(staging.iterdir())]
        for name in files:  # the JSON last: a reader that finds it finds the model whole
            if name != info_path(output).name:
                os.replace(staging / name, output.parent / name)
        os.replace(staging / info_path(output).name, info_path(output))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": str(output), "files": files, "size_bytes": output.stat().st_size, **info}


def _output(cfg: DictConfig, fmt: str, run_dir: Path, ckpt_path: str) -> Path:
    """The file ``output`` names (default: ``model.onnx`` or ``model.pt2`` in the run folder), checked before any
    heavy work: the right suffix, not an existing file (unless ``overwrite``), a folder that can be written."""
    suffix = FORMATS[fmt]
    output = Path(str(cfg.output)).expanduser() if cfg.output else run_dir / f"model{suffix}"
    if output.suffix != suffix:
        raise ConfigError(f"output={cfg.output}: format={fmt} writes a {suffix} file; e.g. output=model{suffix}")
    if output.resolve() == Path(ckpt_path).resolve() or (output.exists() and not cfg.overwrite):
        raise ConfigError(f"output={output}: exists; choose a new file or set overwrite=true")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as e:
        raise ConfigError(f"output={output}: cannot write there ({e.strerror}); choose another folder") from None
    return output


def _parity_inputs(cfg: DictConfig, module, run_dir: Path):
    """(what they are, a dataset): the inputs ``input`` names, read as transferlab-predict reads them, or else
    the checkpoint's val split."""
    if cfg.input:
        from transferlab.inference import input_dataset

        _, dataset = input_dataset(cfg, module.inputs, run_dir)
        return str(cfg.input), dataset
    from transferlab.inference import checkpoint_data

    try:
        datasets = checkpoint_data(module, {}, run_dir).datasets
    except ConfigError as e:
        raise ConfigError(f"{e}; or give the inputs to check the export on with input=PATH") from None
    if "val" not in datasets:
        raise ConfigError("input=null: the checkpoint's data has no val split; give inputs with input=PATH")
    return "the checkpoint's val split", datasets["val"]


def _collate(module, items) -> Any:
    from torch.utils.data import default_collate

    return (module.inputs.collate or default_collate)(list(items)).inputs


def _tensors(inputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(inputs.values()) if isinstance(inputs, dict) else (inputs,)


def _example(module, dataset) -> tuple[torch.Tensor, ...]:
    """Two inputs to trace with: a batch of 1 would be fixed as a static size."""
    items = [dataset[i] for i in range(min(2, len(dataset)))]
    return _tensors(_collate(module, (items * 2)[:2]))


@contextlib.contextmanager
def _quiet():
    """The exporters' tracer and deprecation warnings, and TorchScript's graph dump on failure, kept from the
    user's terminal: what went wrong is the one line this module raises."""
    enabled = torch._C._jit_is_onnx_log_enabled()
    torch._C._jit_set_onnx_log_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch._C._jit_set_onnx_log_enabled(enabled)


def _to_onnx(serving: Serving, example: tuple[torch.Tensor, ...], path: Path) -> None:
    import onnx

    names = input_names(serving.inputs.kind)
    dynamic = {name: {0: "batch", 1: "sequence"} if serving.inputs.kind == "text" else {0: "batch"} for name in names}
    try:
        with _quiet(), torch.no_grad():
            # dynamo=False: the TorchScript exporter, as timm's onnx_export does; newer torch defaults to dynamo.
            torch.onnx.export(serving, example, str(path), dynamo=False, opset_version=OPSET, input_names=list(names),
                              output_names=["logits"], dynamic_axes={**dynamic, "logits": {0: "batch"}})  # fmt: skip
    except torch.onnx.errors.UnsupportedOperatorError as e:
        operator = str(e).split("'")[1] if "'" in str(e) else first_line(e)
        where = _holder(serving, example, operator)
        raise ConfigError(
            f"format=onnx: the ONNX exporter cannot convert {operator} (opset {OPSET}) in {where}; "
            "try format=torch_export, or replace that operation"
        ) from None
    except Exception as e:
        raise ConfigError(f"format=onnx: the ONNX export failed ({first_line(e)}); try format=torch_export") from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ConfigError(f"format=onnx: the exported file fails the ONNX checker ({first_line(e)})") from None


def _to_torch_export(serving: Serving, example: tuple[torch.Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    shapes: dict[str, Any] = {"inputs": {0: batch}}
    if serving.inputs.kind == "text":
        sequence = torch.export.Dim("sequence", min=1, max=serving.inputs.max_length)
        shapes = {"inputs": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(serving, example, dynamic_shapes=shapes)
    except Exception as e:
        raise ConfigError(
            f"format=torch_export: torch.export cannot capture the model ({first_line(e)}); "
            "try format=onnx, or make the model's forward traceable"
        ) from None
    torch.export.save(program, str(path))


def _holder(model: nn.Module, example: tuple[torch.Tensor, ...], operator: str) -> str:
    """The innermost submodule (its name and class) whose forward calls ``operator`` (``aten::name``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = [model]
    found: list[nn.Module] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and func._schema.name == operator:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def enter(module, args) -> None:
        stack.append(module)

    def leave(module, args, output) -> None:  # a hook that returns something replaces the output
        stack.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    try:
        with torch.no_grad(), Watch():
            model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        return "the model"
    holder = found[0]
    return f"{names[holder] or 'the model'} ({type(holder).__module__}.{type(holder).__qualname__})"


def _info(module, fmt: str, ckpt_path: str) -> dict[str, Any]:
    inputs = {k: v for k, v in module.inputs.state().items() if k != "tokenizer_json"}
    return {
        "format": fmt,
        **({"opset": OPSET} if fmt == "onnx" else {}),
        "inputs": inputs,
        "input_names": list(input_names(module.inputs.kind)),
        "output_names": ["logits"],
        "logits": "(batch, classes); softmax gives each class's probability",
        "class_names": module.class_names,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "backbone": module.metadata.get("backbone"),
        "versions": _versions(fmt),
    }


def _versions(fmt: str) -> dict[str, str]:
    found = versions()
    if fmt == "onnx":
        import onnx
        import onnxruntime

        found.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return found


def _write_beside(model: Path, info: dict[str, Any], module) -> None:
    """The JSON beside ``model`` and, for a text model, its tokenizer."""
    _write_info(model, info)
    if module.inputs.kind == "text":
        tokenizer_path(model).write_text(module.inputs.tokenizer_json)


def _write_info(model: Path, info: dict[str, Any]) -> None:
    info_path(model).write_text(json.dumps(info, indent=2, default=str) + "\n")


def _parity(serving: Serving, exported, module, dataset, atol: float, fmt: str) -> dict[str, Any]:
    """The largest logit difference between PyTorch and the export (the first input alone; every input in
    batches of ``PARITY_BATCH``) and on how many inputs their top classes agree; a ConfigError above ``atol``
    or on any disagreement."""
    from torch.utils.data import DataLoader

    collate = lambda items: _collate(module, items)  # noqa: E731
    loader = DataLoader(dataset, batch_size=PARITY_BATCH, collate_fn=collate)
    first = collate([dataset[0]])
    diffs = {"batch_1": _difference(serving, exported, first)[0], f"batch_{PARITY_BATCH}": 0.0}
    agree = n = 0
    for inputs in loader:
        difference, agreed = _difference(serving, exported, inputs)
        diffs[f"batch_{PARITY_BATCH}"] = max(diffs[f"batch_{PARITY_BATCH}"], difference)
        agree, n = agree + agreed, n + len(_tensors(inputs)[0])
    worst = max(diffs.values())
    runtime = "onnxruntime" if fmt == "onnx" else "the exported program"
    if not worst <= atol:  # NaN fails too
        raise ConfigError(
            f"atol={atol}: {runtime}'s logits differ from PyTorch's by up to {worst:.3g} "
            f"({', '.join(f'{k}: {v:.3g}' for k, v in diffs.items())}); nothing was written; "
            "raise atol if that is expected, or try the other format"
        )
    if agree != n:
        raise ConfigError(
            f"format={fmt}: {runtime}'s top class differs from PyTorch's on {n - agree} of {n} inputs; "
            "nothing was written; try the other format"
        )
    return {"atol": atol, "max_abs_diff": worst, "max_abs_diff_by_batch": diffs, "agree": agree, "n": n}


def _difference(serving: Serving, exported, inputs) -> tuple[float, int]:
    with torch.no_grad():
        expected = serving(*_tensors(inputs)).float()
    got = exported.logits(inputs).float()
    return (got - expected).abs().max().item(), int((got.argmax(1) == expected.argmax(1)).sum())


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(export, cfg)


main = cli_main(_hydra_main, "export")

if __name__ == "__main__":
    main()
