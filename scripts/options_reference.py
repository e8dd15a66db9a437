"""Write docs/options.md: every option of every config in conf/, from the configs themselves.

Per option: its full key, its default as written, its type (from the default), its meaning (the comment on its line
and the comment lines that continue it, or the comment block right above it, or the library class it is an
argument of) and the one-line error a value of the wrong kind (``bogus``, ``-1``, ``maybe``) gets: for
transferlab-train the config is composed with the option's preset and that value, checked and built as the command
does (without training); eval, predict and export run on a tiny checkpoint made first.

    python scripts/options_reference.py    # tests/test_docs.py checks the committed page against conf/
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUTPUT = ROOT / "docs/options.md"
COMMANDS = ("train", "eval", "predict", "export")  # the top-level configs, one per command
SKIP_GROUPS = ("hydra",)  # Hydra's own run-folder and logging settings
GLOBAL_GROUPS = ("experiment", "sweep", "cluster")  # presets that set options of other groups (@package _global_)
# Options a preset cannot compose without (as in tests/test_config.py): the probe sets them so validate runs.
NEEDS = {
    "backbone/custom": ["backbone.model._target_=torch.nn.Identity"],
    "data/folder": ["data.root=/tmp"],
    "data/text": ["data.root=/tmp"],
    "adapt": ["data=digits_m"],
    "adapt/shot": [f"adapt.source_ckpt={__file__}"],
    "data/source_free": ["data.input_size=null", "adapt=shot", "adapt.source_ckpt={ckpt}", "monitor=target/im"],
}
KEY = re.compile(r"^(?P<indent> *)(?:- )?(?P<key>[A-Za-z_][\w.]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


@dataclass
class Option:
    key: str
    default: str
    comment: str


def parse(path: Path) -> tuple[str, list[Option]]:
    """(the file's header comment, its leaf options with their comments) from a config file's lines."""
    lines = path.read_text().splitlines()
    header, options, stack = [], [], []  # stack: (indent, key) of the open mappings
    targets: dict[str, str] = {}  # a mapping's key ("" for the file) -> its _target_
    above: list[str] = []
    last: Option | None = None
    last_comment_column = -1
    in_defaults = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            above, last = [], None
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("@package"):
                continue
            column = line.index("#")
            if last is not None and column == last_comment_column:  # a comment continued on the next line
                last.comment += " " + text
            elif not options and not stack and not in_defaults and last is None:
                header.append(text)
            else:
                above.append(text)
            continue
        match = KEY.match(line)
        if not match:  # a list item of the defaults list, or a value's continuation
            last = None
            continue
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0:
            in_defaults = key == "defaults"
        if key == "_target_":
            targets[".".join(k for _, k in stack)] = match["value"].strip()
        if in_defaults or key in ("_target_", "_partial_") or (not stack and key == "hydra"):
            above, last = [], None
            continue
        full = ".".join([k for _, k in stack] + [key])
        value = match["value"].strip()
        comment = " ".join([*above, match["comment"] or ""]).strip()
        above = []
        if not value:  # a mapping (or a list) follows
            stack.append((indent, key))
            last = None
            if comment:
                options.append(Option(full, "", comment))
            continue
        last = Option(full, value, comment)
        last_comment_column = line.index("#") if match["comment"] is not None else -1
        options.append(last)
    inherited = _inherited_target(path)
    if inherited and "" not in targets:
        targets[""] = inherited
    by_key = {o.key: o for o in options}
    base = _extended(path)
    said_before = {o.key: o.comment for o in parse(base)[1]} if base else {}
    for o in options:
        if o.comment:
            continue
        parent = o.key.rpartition(".")[0]
        owner = _library(next((targets[p] for p in _prefixes(parent) if p in targets), None))
        said = by_key[parent].comment if parent in by_key else ""
        if said_before.get(o.key):  # as the preset it extends says
            o.comment = said_before[o.key]
        elif owner:  # a library's argument: the library documents it
            o.comment = f"an argument of `{owner}`"
        elif said.startswith("keyword arguments of "):
            o.comment = f"an argument of `{said.removeprefix('keyword arguments of ').split()[0]}`"
    return " ".join(header), options


def _library(target: str | None) -> str | None:
    """``target`` when a library owns it; for a transferlab subclass of a library class, that class."""
    if not target or not target.startswith("transferlab."):
        return target
    import importlib

    module, _, name = target.rpartition(".")
    found = getattr(importlib.import_module(module), name, None)
    mro = getattr(found, "__mro__", ())
    if any("__init__" in vars(c) for c in mro if c.__module__.startswith("transferlab")):
        return None  # its own arguments
    bases = [c for c in mro if not c.__module__.startswith(("transferlab", "builtins"))]
    return f"{bases[0].__module__}.{bases[0].__qualname__}" if bases else None


def _extended(path: Path) -> Path | None:
    """The preset of the same group that ``path`` extends (the first such entry of its defaults list)."""
    from omegaconf import OmegaConf

    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_" and (path.parent / f"{entry}.yaml").is_file():
            return path.parent / f"{entry}.yaml"
    return None


def _prefixes(key: str) -> list[str]:
    """``a.b`` -> [``a.b``, ``a``, ``""``]: the enclosing mappings, innermost first."""
    parts = key.split(".") if key else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _inherited_target(path: Path) -> str | None:
    """The ``_target_`` of a preset, or of the preset it extends."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(path)
    if "_target_" in config:
        return str(config["_target_"])
    base = _extended(path)
    return _inherited_target(base) if base else None


def kind(default: str) -> str:
    if default in ("", "null", "???"):
        return "any" if default != "???" else "required"
    if default in ("true", "false"):
        return "bool"
    if re.fullmatch(r"-?\d+", default):
        return "int"
    if re.fullmatch(r"-?[\d.]+(e-?\d+)?", default, re.I):
        return "float"
    if default.startswith("["):
        return "list"
    if default.startswith("{"):
        return "mapping"
    if default.startswith("${"):
        return "interpolation"
    return "str"


def wrong_value(default: str) -> str:
    return {"bool": "maybe", "int": "-1", "float": "-1.0"}.get(kind(default), "bogus")


# A tiny run for the probes that build the run's parts: a 0.4M-parameter timm test model on 3 digit classes.
TINY = ["backbone.name=test_resnet", "data.classes=[0,1,2]", "data.input_size=32", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "logger=none", "paths.output_dir=/tmp/transferlab-options",
        "paths.cache_dir=/tmp/transferlab-options/cache"]  # fmt: skip


def probe(group: str | None, preset: str | None, key: str, default: str, ckpt: Path | None = None) -> str:
    """What transferlab-train answers ``key`` set to a value of the wrong kind: the one-line error of the config's
    checks (before anything is built) or of building the run's parts (backbone, data, head, module, Trainer);
    "" where both accept it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.cli import instantiate
    from transferlab.config import validate
    from transferlab.train import _build, check_metrics, trainer_config

    overrides = list(TINY) if group != "backbone" or preset == "timm" else TINY[1:]
    if group:
        needs = [*NEEDS.get(group, []), *NEEDS.get(f"{group}/{preset}", [])]
        overrides += [f"{group}={preset}", *(o.format(ckpt=ckpt) for o in needs)]
    wrong = wrong_value(default)

    def attempt() -> str:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"++{key}={wrong}"])
        validate(cfg)
        if group == "backbone" and preset == "hf":
            return "checked when the encoder loads (it needs a model folder)"
        parts = _build(cfg)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
        instantiate(trainer_config(cfg), callbacks=callbacks, logger=loggers or False)
        check_metrics(cfg, parts["module"])
        return ""

    return _answer(wrong, attempt)


def probe_command(command: str, key: str, default: str, ckpt: Path, images: Path) -> str:
    """What transferlab-eval, -predict or -export answers ``key`` set to a value of the wrong kind, run on a tiny
    checkpoint (and, for predict, a folder of two images); "" where it accepts it."""
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.eval import evaluate
    from transferlab.export import export
    from transferlab.predict import predict

    task = {"eval": evaluate, "predict": predict, "export": export}[command]
    given = [f"ckpt_path={ckpt}", *([f"input={images}"] if command == "predict" else [])]
    given += ["trainer.accelerator=cpu"] if command != "export" else []
    wrong = wrong_value(default)

    def attempt() -> str:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose(command, overrides=[*given, "paths.output_dir=run", f"++{key}={wrong}"])
        task(cfg)
        return ""

    here = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="transferlab-options-"))  # what it writes at a relative path lands there
    try:
        return _answer(wrong, attempt)
    finally:
        os.chdir(here)


def _answer(wrong: str, attempt: Callable[[], str]) -> str:
    """``attempt()``'s own answer, or the one-line error it raised for the ``wrong`` value; an error that is not
    one line naming the option is a defect to fix, marked UNCHECKED."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from transferlab.errors import ConfigError

    try:
        return attempt()
    except ConfigError as e:
        return f"`{wrong}`: {e}"
    except (HydraException, OmegaConfBaseException) as e:
        return f"`{wrong}`: {str(e).splitlines()[0]}"
    except Exception as e:
        return f"`{wrong}`: UNCHECKED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def tiny_checkpoint() -> tuple[Path, Path]:
    """A 1-epoch tiny run's best checkpoint and a folder of two digit images: what the command probes run on."""
    import tempfile

    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from PIL import Image

    from transferlab.train import train

    root = Path(tempfile.mkdtemp(prefix="transferlab-options-"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "test=false", f"paths.output_dir={root / 'run'}"])
    summary = train(cfg)
    (root / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 100 * i, np.uint8)).save(root / "images" / f"{i}.png")
    return Path(summary["checkpoints"]["best"]), root / "images"


def table(options: list[Option], prefix: str, errors: dict[str, str] | None) -> list[str]:
    head = "| option | default | type | meaning |" + (" wrong value → error |" if errors is not None else "")
    rule = "|---|---|---|---|" + ("---|" if errors is not None else "")
    rows = [head, rule]
    for o in options:
        key = f"{prefix}{o.key}"
        cells = [
            f"`{key}`",
            f"`{o.default}`" if o.default else "",
            kind(o.default) if o.default else "mapping",
            o.comment,
        ]
        if errors is not None:
            cells.append(errors.get(key) or ("accepted as given" if o.default else ""))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


def generate(probe_errors: bool = True) -> str:
    out = [
        "# Options reference",
        "",
        "Generated from conf/ by `python scripts/options_reference.py`; a test fails when this page is out of date",
        "or an option has no meaning written beside it. Set any option on the command line as `key=value`",
        "(`group=preset` picks a preset; `+group=preset` adds one of the groups that are not in the defaults).",
        "The last column is what the command answers (exit status 2, one line) when the option gets a value of the",
        'wrong kind: `bogus`, `-1`, `maybe`; "accepted as given" where any value of that kind is taken.',
        "",
    ]
    made = tiny_checkpoint() if probe_errors else None
    for command in COMMANDS:
        header, options = parse(CONF / f"{command}.yaml")
        out += [f"## transferlab-{command}", "", header, ""]
        errors = None
        if made and command == "train":
            errors = {o.key: probe(None, None, o.key, o.default, made[0]) for o in options if o.default}
        elif made:
            errors = {o.key: probe_command(command, o.key, o.default, *made) for o in options if o.default}
        out += [*table(options, "", errors), ""]
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in SKIP_GROUPS):
        out += [f"## {group.name}", ""]
        for path in sorted(group.glob("*.yaml")):
            header, options = parse(path)
            name = (
                f"{group.name}={path.stem}" if group.name not in ("sweep", "cluster") else f"+{group.name}={path.stem}"
            )
            out += [f"### `{name}`", "", header, ""]
            if group.name in GLOBAL_GROUPS or not options:
                out += ["Sets options of other groups (see the file)." if options else "", ""]
                continue
            errors = {f"{group.name}.{o.key}": probe(group.name, path.stem, f"{group.name}.{o.key}", o.default,
                                                     made[0]) for o in options if o.default} if made else None  # fmt: skip
            out += [*table(options, f"{group.name}.", errors), ""]
    return "\n".join(line for line in out).rstrip() + "\n"


def undocumented() -> list[str]:
    """Options without a meaning written beside them in conf/."""
    missing = []
    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent.name in SKIP_GROUPS or path.parent.name in GLOBAL_GROUPS:
            continue
        _, options = parse(path)
        missing += [f"{path.relative_to(CONF)}: {o.key}" for o in options if not o.comment]
    return missing


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = generate()
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
