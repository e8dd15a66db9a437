"""Layer groups: a backbone's parameters as an ordered list, input to output.

Freeze depth, discriminative learning rates and BatchNorm policy all speak of these groups. Sources, in order of
precedence: regexes from config, timm's own ``group_matcher``, and a fallback over the top-level children, where a
child whose parameters all sit in one ``nn.ModuleList`` (a transformer's ``encoder.layer``) gives a group per block:
a Hugging Face encoder's groups are its embeddings, each layer in order, then the pooler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from transferlab.errors import ConfigError


@dataclass(frozen=True)
class LayerGroup:
    name: str
    param_names: tuple[str, ...]


def layer_groups(model: nn.Module, regexes: list[str] | None = None) -> list[LayerGroup]:
    """Group ``model``'s parameters input->output; every parameter lands in exactly one group."""
    names = [n for n, _ in model.named_parameters()]
    if regexes:
        groups = _groups_from_regexes(names, regexes)
    elif hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        by_id = group_parameters(model, model.group_matcher(coarse=True))
        groups = [LayerGroup(_group_name(ps, i), tuple(ps)) for i, ps in sorted(by_id.items()) if ps]
    else:
        groups = _groups_from_children(model)
    _check_coverage(names, groups)
    return _unique_names(groups)


def _unique_names(groups: list[LayerGroup]) -> list[LayerGroup]:
    """Names are what optimizer groups, lr logs and phases go by: a repeated one gets its position appended."""
    names = [g.name for g in groups]
    return [
        LayerGroup(f"{g.name}_{i}" if names.count(g.name) > 1 else g.name, g.param_names) for i, g in enumerate(groups)
    ]


def _groups_from_regexes(names: list[str], regexes: list[str]) -> list[LayerGroup]:
    compiled = [re.compile(r) for r in regexes]
    members: list[list[str]] = [[] for _ in compiled]
    unmatched = []
    for name in names:
        index = next((i for i, rx in enumerate(compiled) if rx.search(name)), None)
        if index is None:
            unmatched.append(name)
        else:
            members[index].append(name)
    if unmatched:
        raise ConfigError(
            f"backbone.layer_groups: {len(unmatched)} parameters match no regex (e.g. {unmatched[0]!r}); "
            "add a regex that matches them"
        )
    empty = [regexes[i] for i, m in enumerate(members) if not m]
    if empty:
        raise ConfigError(f"backbone.layer_groups: regex {empty[0]!r} matches no parameter; fix or remove it")
    return [LayerGroup(_group_name(m, i), tuple(m)) for i, m in enumerate(members)]


def _groups_from_children(model: nn.Module) -> list[LayerGroup]:
    groups = []
    for child_name, child in model.named_children():
        for name, part in _blocks(child_name, child) or [(child_name, child)]:
            params = [f"{name}.{n}" for n, _ in part.named_parameters()]
            if params:
                groups.append(LayerGroup(name, tuple(params)))
    direct = [n for n, _ in model.named_parameters(recurse=False)]
    if direct:  # parameters owned by the root module itself (e.g. a positional embedding) go first
        groups.insert(0, LayerGroup("root", tuple(direct)))
    return groups


def _blocks(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(name, block) of each element of the ``nn.ModuleList`` that holds all of ``module``'s parameters, reached
    through children that each hold them all (``encoder`` -> ``encoder.layer``); None where there is no such list."""
    while not isinstance(module, nn.ModuleList):
        holders = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        if len(holders) != 1 or any(True for _ in module.parameters(recurse=False)):
            return None
        name, module = holders[0]
        prefix = f"{prefix}.{name}"
    return [(f"{prefix}.{i}", block) for i, block in enumerate(module)]


def _group_name(param_names: list[str], index: int) -> str:
    """'layer1', 'stages.2', 'blocks.11+norm': each name cut after its first numbered part."""
    parts = list(dict.fromkeys(_unit(n) for n in param_names))
    if index == 0 and len(parts) > 1:
        return "stem"  # timm's name for what precedes the first stage
    return "+".join(parts[:3]) + ("+..." if len(parts) > 3 else "")


def _unit(param_name: str) -> str:
    tokens = param_name.split(".")[:-1] or param_name.split(".")
    for i, token in enumerate(tokens):
        if token[-1].isdigit():
            return ".".join(tokens[: i + 1])
    return ".".join(tokens)


def _check_coverage(names: list[str], groups: list[LayerGroup]) -> None:
    seen = [n for g in groups for n in g.param_names]
    if len(seen) != len(set(seen)) or set(seen) != set(names):
        missing = sorted(set(names) - set(seen))
        raise ConfigError(
            f"backbone.layer_groups: groups cover {len(set(seen))} of {len(names)} parameters "
            f"(e.g. {missing[:1]} unassigned); set backbone.layer_groups to regexes that cover every parameter"
        )
