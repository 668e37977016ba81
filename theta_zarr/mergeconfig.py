"""Merge settings as text: parameter values from git config or the command line, and the
YAML merge config of ``merge-models`` (in the spirit of mergekit's).

A value is a number, a yes/no word (``normalize``, ``rescale``), or a comma list
with one number per model.  In YAML, a value may also be a list of
``{filter: GLOB, value: V}`` entries: the first entry whose glob matches the tensor
name (or that has no filter) gives the value, as mergekit's conditional parameters
do (mergekit matches a substring; theta-zarr a glob, as in git config).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .merge import Rule, StrategyTable
from .merges import MergeOptions, Strategy, get_strategy, parameter_names
from .merges.base import Value, value_problem

WORDS = {"true": 1.0, "yes": 1.0, "on": 1.0, "false": 0.0, "no": 0.0, "off": 0.0}


class ConfigError(ValueError):
    """A merge setting or merge config file that cannot be used (one line: what, where)."""


def parse_value(text: str, where: str) -> Value:
    """A setting's text as a number, a yes/no flag (1.0/0.0) or a per-model tuple."""
    parts = [p.strip() for p in text.split(",")]
    out = []
    for p in parts:
        if p.lower() in WORDS:
            out.append(WORDS[p.lower()])
            continue
        try:
            x = float(p)
        except ValueError:
            raise ConfigError(f"{where}: not a number: {text!r}") from None
        if not math.isfinite(x):
            raise ConfigError(f"{where}: not a finite number: {text!r}")
        out.append(x)
    return out[0] if len(out) == 1 else tuple(out)


def check_param(name: str, value: Value | list[tuple[str | None, Value]], where: str) -> None:
    """Refuse a value parameter ``name`` cannot take (``merges.base.value_problem``: not
    finite, or a fraction outside [0, 1]); ``value`` may be a list of ``(filter, value)``
    entries, as a YAML parameter is."""
    for _, v in value if isinstance(value, list) else [(None, value)]:
        for x in v if isinstance(v, tuple) else (v,):
            problem = value_problem(name, x)
            if problem is not None:
                raise ConfigError(f"{where}: {problem}, not {x:g}")


def check_name(name: str, where: str) -> None:
    """Refuse a parameter name no strategy reads (a typo would otherwise be ignored)."""
    known = parameter_names()
    if name not in known:
        raise ConfigError(f"{where}: unknown merge parameter {name!r} "
                          f"(known: {', '.join(sorted(known))})")


def parse_assignments(items: list[str], where: str = "--set") -> MergeOptions:
    """``NAME=VALUE`` strings (the ``--set`` option) as options."""
    values: dict[str, Value] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ConfigError(f"{where}: expected NAME=VALUE, got {item!r}")
        check_name(name, f"{where} {name}")
        values[name] = parse_value(text, f"{where} {name}")
        check_param(name, values[name], f"{where} {name}")
    return MergeOptions(values)


# -- the merge-models config -----------------------------------------------------------
def _yaml_value(v: Any, where: str) -> Value | list[tuple[str | None, Value]]:
    """A YAML parameter value: a number/bool, or a list of {filter, value} entries."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ConfigError(f"{where}: not a finite number: {v!r}")
        return float(v)
    if isinstance(v, str):
        return parse_value(v, where)
    if isinstance(v, list) and all(isinstance(e, dict) for e in v):
        entries = []
        for e in v:
            extra = set(e) - {"filter", "value"}
            if extra or "value" not in e:
                raise ConfigError(f"{where}: each entry needs 'value' and may have 'filter'")
            glob = e.get("filter")
            if glob is not None and not isinstance(glob, str):
                raise ConfigError(f"{where}: 'filter' must be a glob string")
            value = _yaml_value(e["value"], where)
            if isinstance(value, list):
                raise ConfigError(f"{where}: nested filters are not supported")
            entries.append((glob, value))
        return entries
    raise ConfigError(f"{where}: expected a number, true/false or a list of "
                      "{filter, value} entries")


def _params(d: Any, where: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: 'parameters' must be a mapping")
    out = {}
    for name, v in d.items():
        check_name(str(name), f"{where} {name}")
        out[str(name)] = _yaml_value(v, f"{where} {name}")
        check_param(str(name), out[str(name)], f"{where} {name}")
    return out


def _for(value: Any, tensor: str) -> Value | None:
    if not isinstance(value, list):
        return value
    for glob, v in value:
        if glob is None or fnmatch.fnmatchcase(tensor, glob):
            return v
    return None


@dataclass
class ModelSpec:
    """One model of a merge: a revision and its own parameters."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelMergeConfig:
    """A merge of N models onto a base: method, models, parameters (global and per model).

    ``lookup(tensor)`` gives (strategy, options) like :class:`StrategyTable`, with
    per-model parameters as one-value-per-model tuples.
    """

    method: str
    models: list[ModelSpec]
    base: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    source: str = "merge config"

    def lookup(self, tensor: str) -> tuple[Strategy, MergeOptions]:
        strategy = get_strategy(self.method)
        values: dict[str, Value] = {}
        for name, v in self.parameters.items():
            got = _for(v, tensor)
            if got is not None:
                values[name] = got
        per_model = {n for m in self.models for n in m.parameters}
        for name in per_model:
            default = values.get(name, strategy.parameters.get(name))
            column = []
            for m in self.models:
                got = _for(m.parameters[name], tensor) if name in m.parameters else default
                if got is None:
                    got = default
                if got is None or isinstance(got, tuple):
                    raise ConfigError(f"{self.source}: model {m.model!r}: no single value of "
                                      f"{name!r} for {tensor}")
                column.append(float(got))
            values[name] = tuple(column)
        return strategy, MergeOptions(values)

    def table(self) -> StrategyTable:
        """The config as a strategy table (for code that takes one)."""
        return _ConfigTable(self)

    def to_text(self, commits: Mapping[str, str], base_commit: str) -> str:
        """The config as YAML with every revision replaced by its commit id (reproducible)."""
        doc: dict[str, Any] = {"merge_method": self.method, "base_model": base_commit,
                               "models": []}
        for m in self.models:
            entry: dict[str, Any] = {"model": commits[m.model]}
            if m.parameters:
                entry["parameters"] = _dump_params(m.parameters)
            doc["models"].append(entry)
        if self.parameters:
            doc["parameters"] = _dump_params(self.parameters)
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


class _ConfigTable(StrategyTable):
    def __init__(self, config: ModelMergeConfig):
        super().__init__([Rule("*", config.method)])
        self.config = config

    def lookup(self, name: str) -> tuple[Strategy, MergeOptions]:
        return self.config.lookup(name)


def _dump_params(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in params.items():
        if isinstance(v, list):
            out[name] = [{"value": _plain(x)} if g is None else {"filter": g, "value": _plain(x)}
                         for g, x in v]
        else:
            out[name] = _plain(v)
    return out


def _plain(v: Value) -> Any:
    return list(v) if isinstance(v, tuple) else v


def load_config(text: str, source: str) -> ModelMergeConfig:
    """Parse a merge config (YAML); ConfigError names the file and the key at fault."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{at}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping with merge_method and models")
    known = {"merge_method", "method", "models", "base_model", "base", "parameters", "dtype"}
    extra = sorted(str(k) for k in set(doc) - known)
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(extra)} "
                          f"(known: {', '.join(sorted(known))})")
    if "dtype" in doc:
        raise ConfigError(f"{source}: 'dtype' is not supported: a merged parameter keeps "
                          "its own dtype")
    method = doc.get("merge_method", doc.get("method"))
    if not isinstance(method, str):
        raise ConfigError(f"{source}: merge_method is missing")
    try:
        strategy = get_strategy(method)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    raw_models = doc.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{source}: models must be a list of revisions")
    models = []
    for i, m in enumerate(raw_models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) \
                or set(m) - {"model", "parameters"}:
            raise ConfigError(f"{source}: models[{i}] must be a revision or "
                              "{model: REV, parameters: {...}}")
        models.append(ModelSpec(m["model"], _params(m.get("parameters"),
                                                    f"{source}: models[{i}].parameters")))
    base = doc.get("base_model", doc.get("base"))
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{source}: base_model must be a revision")
    params = _params(doc.get("parameters"), f"{source}: parameters")
    for where, given in [(f"{source}: parameters", params),
                         *((f"{source}: models[{i}].parameters", m.parameters)
                           for i, m in enumerate(models))]:
        try:
            strategy.check_names(given)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return ModelMergeConfig(method, models, base, params, source)
