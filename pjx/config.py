"""Config files (`get_config(arg)` -> ConfigDict), `--config.a.b=value` overrides, stages.

A config file is a Python file defining `get_config(arg=None)`; `path.py:ARG` passes
ARG. Overrides are parsed by the existing field's type (like ml_collections'
`config_flags`); an unknown key fails at once listing the closest valid keys.
Model fields not in the file (`--config.model.num_layers=2`) are checked against the
model family's `Config` dataclass.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import os
import sys
from pathlib import Path

import ml_collections

from pjx import optim, sharding


class ConfigError(ValueError):
    """A bad config key or value (unknown key, unparsable override)."""


def base_config() -> ml_collections.ConfigDict:
    """Every top-level key a run understands, with defaults. Config files start here."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name="bert", size="tiny"))  # + Config fields
    c.task = "mlm"  # a key of pjx.tasks.TASKS
    # Per-task options (see pjx.tasks): mask_rate, nsp, label_smoothing, temperature, ...
    c.task_args = ml_collections.ConfigDict()
    c.data = data_config()
    c.eval_data = data_config()
    c.eval_data.source = ""  # "" = no evaluation
    c.batch_size = 32  # global, over all processes and devices
    c.eval_batch_size = 0  # 0 = batch_size
    c.steps = 1000
    c.seed = 0
    c.optimizer = optim.default_config()
    c.mesh = sharding.default_config()
    c.log_every = 50
    c.eval_every = 0  # 0 = only at the end
    c.eval_steps = 0  # 0 = the whole eval set
    c.checkpoint_every = 0  # 0 = only at the end
    c.keep_checkpoints = 3  # the last N are kept ...
    c.best_metric = ""  # ... plus the best by this eval metric ("" = none), e.g. "accuracy"
    c.best_mode = "max"  # "max" | "min"
    c.init_from = ""  # workdir, checkpoint path or hf:PATH
    c.allow_vocab_resize = False  # init_from: copy the overlapping rows of a resized vocab
    c.progress = True  # live progress line on stderr
    # Chained stages: (("name", {"dotted.key": value, ...}), ...), each run in WORKDIR/name.
    # An init_from of "stage:NAME" means WORKDIR/NAME.
    c.stages = ()
    return c


def make_smoke(config, *, seq_len: int = 32, source: str = "embedded") -> None:
    """Turns a config into its `smoke` variant in place: the tiny preset, 2 steps on the
    built-in corpus (or `source`), a 512-piece vocabulary if it trains one, no checkpoints
    before the end. Every config's smoke variant must train and evaluate in seconds on CPU."""
    c = config
    c.model.size = "tiny"
    if source:
        c.data.source, c.eval_data.source = f"{source}[:90%]", f"{source}[90%:]"
    c.data.seq_len = c.eval_data.seq_len = seq_len
    spec = c.data.get("tokenizer", "")
    if spec.startswith("train:sentencepiece"):
        c.data.tokenizer = (
            spec.split("?")[0]
            + "?vocab_size=512&"
            + ("model_type=bpe" if "bpe" in spec else "model_type=unigram")
        )
    c.batch_size, c.steps, c.eval_steps = 8, 2, 2
    c.optimizer.warmup_steps = 1
    c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 0


def data_config() -> ml_collections.ConfigDict:
    """`config.data` / `config.eval_data`: pjx.data's defaults plus the keys pjx.train reads."""
    try:
        from pjx import data as pjx_data

        d = pjx_data.default_config()
    except (ImportError, AttributeError):
        d = ml_collections.ConfigDict()
    d = ml_collections.ConfigDict(d.to_dict() if hasattr(d, "to_dict") else dict(d))
    for key, value in dict(source="embedded", seq_len=128, tokenizer="").items():
        if key not in d:
            d[key] = value
    return d


def load(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`path/to/config.py[:ARG]` + overrides -> ConfigDict."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    name = "pjx_config_" + Path(path).stem
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    return apply_overrides(config, overrides)


def flat_keys(config, prefix="") -> list[str]:
    out = []
    for k, v in config.items():
        key = prefix + k
        if isinstance(v, ml_collections.ConfigDict):
            out += flat_keys(v, key + ".")
        else:
            out.append(key)
    return out


def _model_fields(config) -> dict:
    """Config dataclass fields of the configured model family ({} if unavailable)."""
    try:
        from pjx import models
    except ImportError:
        return {}
    family = models.MODELS.get(config.model.get("name"))
    if family is None:
        return {}
    return {f.name: f for f in dataclasses.fields(family.Config)}


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"expected a bool (true/false), got {text!r}")


def parse_value(text: str, current):
    """Parse `text` as the type of `current` (the existing value)."""
    if isinstance(current, bool):
        return parse_bool(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:  # None, tuples, lists: a Python literal, else the raw string.
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_override(arg: str) -> tuple[str, str]:
    """'--config.a.b=value' | 'config.a.b=value' | 'a.b=value' -> ('a.b', 'value')."""
    arg = arg.lstrip("-")
    if arg.startswith("config."):
        arg = arg[len("config.") :]
    key, sep, value = arg.partition("=")
    if not sep:
        raise ConfigError(f"override {arg!r} is not key=value")
    return key, value


def set_key(config, key: str, value, *, parse: bool = True):
    """Set dotted `key`; unknown keys raise ConfigError listing close valid keys."""
    parts = key.split(".")
    node = config
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            _unknown(config, key)
        node = node[p]
    leaf = parts[-1]
    if leaf not in node:
        field = _model_fields(config).get(leaf) if parts[:-1] == ["model"] else None
        if field is None and not (parts[:-1] == ["task_args"]):
            _unknown(config, key)
        if parse and isinstance(value, str):
            default = None if field is None else field.default
            default = None if default is dataclasses.MISSING else default
            value = parse_value(value, default)
        with node.unlocked():
            node[leaf] = value
        return
    if parse and isinstance(value, str):
        try:
            value = parse_value(value, node[leaf])
        except ValueError as e:
            kind = type(node[leaf]).__name__
            raise ConfigError(f"{key}: cannot parse {value!r} as {kind}") from e
    if node[leaf] is not None and value is not None and type(value) is not type(node[leaf]):
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
    try:
        node[leaf] = value
    except TypeError:  # e.g. None-typed field set before; rebuild without the type lock
        with node.unlocked():
            del node[leaf]
            node[leaf] = value


def _unknown(config, key):
    valid = flat_keys(config)
    valid += [f"model.{f}" for f in _model_fields(config) if f"model.{f}" not in valid]
    close = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")


def apply_overrides(config, overrides=()) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    for arg in overrides:
        key, value = split_override(arg)
        set_key(config, key, value)
    return config


def stage_configs(
    config, workdir: str, overrides=()
) -> list[tuple[str, ml_collections.ConfigDict]]:
    """[(stage workdir, config)] in order; one entry (workdir itself) without stages.

    Each stage = the base config + its overrides + the command-line overrides.
    """
    stages = config.get("stages") or ()
    if not stages:
        return [(workdir, apply_overrides(config, overrides))]
    out = []
    for name, stage_overrides in stages:
        c = copy.deepcopy(config)
        with c.unlocked():
            c.stages = ()
        for key, value in dict(stage_overrides).items():
            set_key(c, key, value, parse=False)
        c = apply_overrides(c, overrides)
        if isinstance(c.init_from, str) and c.init_from.startswith("stage:"):
            c.init_from = os.path.join(workdir, c.init_from[len("stage:") :])
        out.append((os.path.join(workdir, name), c))
    return out
