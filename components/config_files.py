"""Reading loop configs: YAML files layered key by key, `--set key.sub=value` overrides, and error messages that
blame what caused each problem (the file, or the `--set` item). components/config.py validates the tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """Bad configuration: the message names the file (or the `--set` item) and the field."""


# Keys that moved to the section of the stage that owns them: an old key is an error naming its new place.
MOVED = {
    "label.aggregation": "ensemble.aggregation",
    "label.uw_lambda": "ensemble.uw_lambda",
    "train_reward.members": "ensemble.members",
    "evaluate.gate": "gate",
    "label.judge.rubric_version": "label.judge.rubric",
    "gate.heldout_judge": "evaluate.heldout",
    "train_policy.loss_type": "train_policy.dpo.loss_type",
    "train_policy.sft_coef": "train_policy.dpo.sft_coef",
    "train_policy.rl.kl_coef": "train_policy.beta",
    "train_policy.probe_prompts": "train_policy.probe.prompts",
    "train_policy.probe_samples": "train_policy.probe.samples",
    "fanout.generate_shards": "generate.shards",
}


def moved_keys(tree: dict) -> dict[str, str]:
    """{old key: its new place} for every moved key `tree` sets."""
    found = {}
    for old, new in MOVED.items():
        node: Any = tree
        for key in old.split("."):
            node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            found[old] = new
    return found


_MISSING = object()


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[leaf] = value


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (binary content): pass a YAML config file") from None
    except (IsADirectoryError, PermissionError) as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if tree is None:  # an empty file (or only comments) would silently run the full default loop
        raise ConfigError(f"{path}: the config file is empty: put the loop settings in it (start from "
                          "configs/tiny.yaml)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return tree


def apply_overrides(tree: dict, overrides, where: str = "--set") -> dict[str, str]:
    """Apply `key.sub=value` items (values parsed as YAML) to `tree`; returns {dotted key: the item}."""
    applied = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where} {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{where} {item!r}: the value is not valid YAML (quote it)") from None
        _set_path(tree, key.strip(), value)
        applied[key.strip()] = item
    return applied


def source(field: str, applied: dict[str, str]) -> str | None:
    """The --set item that set `field` (or a section above or below it), if one did: the last one wins."""
    found = None
    for key, item in applied.items():
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            found = item
    return found


def invalid(err: ValidationError, files: str, applied: dict[str, str], where: str = "--set") -> ConfigError:
    """One line per problem, each blamed on what set it: a `--set` item, else the YAML file(s)."""
    lines, blamed = [], set()
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        item = source(field, applied)
        if not e["loc"] and applied:  # a check across sections: the files and the overrides together
            blamed.update([files, *(f"{where} {i}" for i in applied.values())])
        else:
            blamed.add(f"{where} {item}" if item else files)
        lines.append(f"  {field}: {msg}" + (f" (from {where} {item})" if item else ""))
    return ConfigError(f"{' + '.join(sorted(blamed))}: invalid config\n" + "\n".join(lines))
