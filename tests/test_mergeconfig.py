"""Merge settings as text: values, --set, and the merge-models YAML config."""

from __future__ import annotations

import pytest

from theta_zarr.mergeconfig import ConfigError, load_config, parse_assignments, parse_value

CONFIG = """\
merge_method: ties
base_model: main
models:
  - model: a
    parameters:
      weight: 1.0
      density: [{filter: "head.*", value: 1.0}, {value: 0.3}]
  - b
parameters:
  lambda: 0.8
  normalize: false
  density: 0.5
"""


def test_values():
    assert parse_value("0.25", "k") == 0.25
    assert parse_value("true", "k") == 1.0 and parse_value("Off", "k") == 0.0
    assert parse_value("1, 0.5", "k") == (1.0, 0.5)
    for bad in ("x", "1,", "nan", "inf"):
        with pytest.raises(ConfigError, match="k: not a"):
            parse_value(bad, "k")


def test_assignments():
    opts = parse_assignments(["density=0.2", "weight=1,0.5"])
    assert opts.get("density", 1.0) == 0.2 and opts.get("weight", 1.0, 1) == 0.5
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_assignments(["density"])
    with pytest.raises(ConfigError, match="unknown merge parameter 'densty'"):
        parse_assignments(["densty=1"])
    with pytest.raises(ConfigError, match=r"--set alpha: must be in \[0, 1\], from ours"):
        parse_assignments(["alpha=1.01"])
    with pytest.raises(ConfigError, match=r"--set gamma: must be in \[0, 1\]"):
        parse_assignments(["gamma=0.1,-0.1"])
    # weights and scales may be any finite number: a negative one subtracts a task vector
    assert parse_assignments(["weight=-1,2", "lambda=-0.5", "scale=3"]).values == {
        "weight": (-1.0, 2.0), "lambda": -0.5, "scale": 3.0}


def test_config_lookup_per_tensor_and_per_model():
    cfg = load_config(CONFIG, "merge.yml")
    strategy, opts = cfg.lookup("layers.0.w")
    assert strategy.name == "ties"
    assert opts.values["density"] == (0.3, 0.5)  # model a's filter, model b the global value
    assert opts.values["weight"] == (1.0, 1.0)   # b: the strategy's default
    assert opts.values["lambda"] == 0.8 and opts.values["normalize"] == 0.0
    assert cfg.lookup("head.w")[1].values["density"] == (1.0, 0.5)
    text = cfg.to_text({"a": "1" * 40, "b": "2" * 40}, "3" * 40)
    again = load_config(text, "recorded")
    assert again.base == "3" * 40 and [m.model for m in again.models] == ["1" * 40, "2" * 40]
    assert again.lookup("head.w")[1] == cfg.lookup("head.w")[1]


@pytest.mark.parametrize("text, message", [
    ("- a\n", "expected a mapping"),
    ("models: [a, b]\n", "merge_method is missing"),
    ("merge_method: ties\n", "models must be a list"),
    ("merge_method: ties\nmodels: [a, {model: b, extra: 1}]\n", "models[1] must be"),
    ("merge_method: ties\nmodels: [a, b]\ndtype: bfloat16\n", "'dtype' is not supported"),
    ("merge_method: ties\nmodels: [a, b]\nfoo: 1\n", "unknown key(s) foo"),
    ("merge_method: ties\nmodels: [a, b]\nparameters: {density: [{filter: 1, value: 2}]}\n",
     "'filter' must be a glob"),
    ("merge_method: ties\nmodels: [a, b]\nparameters: {density: {x: 1}}\n",
     "expected a number"),
    # parameters the method does not read were ignored: mergekit's task_arithmetic weighs
    # its models, theta-zarr's task-arithmetic added them unweighted
    ("merge_method: task-arithmetic\nmodels: [{model: a, parameters: {weight: 0.3}}, b]\n",
     "models[0].parameters: strategy 'task-arithmetic' does not read 'weight' "
     "(its parameters: scale)"),
    ("merge_method: slerp\nmodels: [a, b]\nparameters: {density: 0.5, lambda: 2}\n",
     "parameters: strategy 'slerp' does not read 'density', 'lambda'"),
    # an interpolation weight outside [0, 1] extrapolated, a NaN made NaN weights
    ("merge_method: average\nmodels: [a, b]\nparameters: {alpha: 2}\n",
     "parameters alpha: must be in [0, 1], from ours (0) to theirs (1), not 2"),
    ("merge_method: slerp\nmodels: [a, b]\nparameters: {t: -0.25}\n",
     "parameters t: must be in [0, 1], from the first model (0) to the second (1), not -0.25"),
    ("merge_method: slerp\nmodels: [a, b]\nparameters: {t: .nan}\n",
     "parameters t: not a finite number"),
    ("merge_method: ties\nmodels: [a, {model: b, parameters: {density: "
     "[{filter: 'x*', value: 0.5}, {value: 1.5}]}}]\n",
     "models[1].parameters density: must be in [0, 1], the share of each task vector kept"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: -.inf}}, b]\n",
     "models[0].parameters weight: not a finite number"),
    ("merge_method: task-arithmetic\nmodels: [a, b]\nparameters: {scale: 'nan'}\n",
     "parameters scale: not a finite number"),
])
def test_config_errors_name_file_and_key(text, message):
    with pytest.raises(ConfigError) as e:
        load_config(text, "merge.yml")
    assert str(e.value).startswith("merge.yml") and message in str(e.value)
