"""Run configs: config files, `--config.a.b=value` overrides, stages.

A config file is a Python file defining `get_config(arg=None)` that returns an
`ml_collections.ConfigDict` built on `base_config()`; `path.py:ARG` passes ARG. Overrides
are parsed by the existing field's type (like ml_collections' `config_flags`); an unknown
key fails at once naming the closest valid keys.

Values derived from others are written as references, so they follow the command line:
`c.optimizer.warmup_steps = c.get_ref("steps") // 10` gives 50 warm-up steps under
`--config.steps=500`, and `--config.optimizer.warmup_steps=20` replaces the rule. Each
`eval_data` key not set explicitly is `data`'s.

`pjx.resolution.resolve` derives everything else in one place, after the overrides: the
references, `eval_data`, the architecture an `init_from` source fixes, the vocabulary size
the tokenizer fixes, the model heads the task implies. Its result is what a run uses,
prints at its start and saves as WORKDIR/config.json.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import json
import os
import sys
from pathlib import Path

import ml_collections

from pjx import (
    data,
    lora,
    metrics_log,
    models,
    optim,
    privacy,
    sharding,
    tasks,
)
from pjx.tokenizers import parse_spec
from pjx.values import parse_bool

# Keys of `data` that `eval_data` does not take: the run has one tokenizer.
TRAIN_ONLY_DATA_KEYS = ("tokenizer",)


class ConfigError(ValueError):
    """A bad config key or value (unknown key, unparsable override, conflicting fields)."""


def base_config() -> ml_collections.ConfigDict:
    """Every top-level key a run understands, with defaults. Config files start here."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name="bert", size="tiny"))  # + Config fields
    c.task = "mlm"  # a key of pjx.tasks.TASKS
    # Per-task options (the task's `defaults`, see pjx.tasks): mask_rate, nsp, temperature...
    c.task_args = ml_collections.ConfigDict()
    c.data = data.default_config()
    # The eval source; any other data key set here overrides data's for evaluation.
    c.eval_data = ml_collections.ConfigDict(dict(source=""))  # "" = no evaluation
    c.batch_size = 32  # global, over all processes and devices
    c.eval_batch_size = 0  # 0 = batch_size
    c.steps = 1000
    c.seed = 0
    c.optimizer = ml_collections.ConfigDict(optim.DEFAULTS)
    c.mesh = ml_collections.ConfigDict(sharding.MESH_DEFAULTS)
    # Differentially private training (pjx.privacy): off unless noise_multiplier or
    # target_epsilon is set.
    c.dp = ml_collections.ConfigDict(privacy.DEFAULTS)
    # Low-rank adapters (pjx.lora): off unless rank > 0.
    c.lora = ml_collections.ConfigDict(lora.DEFAULTS)
    # ELECTRA (task electra): the generator's width as a fraction of the discriminator's,
    # and the discriminator loss's weight. Read by that task only (`Task.section`).
    c.electra = ml_collections.ConfigDict(tasks.electra.DEFAULTS)
    # Distillation (task distill): the teacher, the student's init, the terms and their
    # weights ("logits:5,hidden_cosine:1,mlm:2"), temperature, relation heads. Read by that
    # task only (`Task.section`) and pjx.teacher.
    c.distill = ml_collections.ConfigDict(tasks.distill.DEFAULTS)
    # Weights & Biases (pjx.metrics_log, the `wandb` extra): off unless project is set.
    c.wandb = ml_collections.ConfigDict(metrics_log.WANDB_DEFAULTS)
    # The stall watchdog (pjx.watchdog): seconds without progress before the run stops with
    # its stacks kept; None = automatic (generous, follows the step time), 0 = off.
    c.watchdog = ml_collections.ConfigDict(dict(stall_s=None))
    # A jax.profiler trace of steps start_step+1 .. start_step+steps into WORKDIR/profile/
    # (TensorBoard / Perfetto); steps 0 = none.
    c.profile = ml_collections.ConfigDict(dict(start_step=0, steps=0))
    c.log_every = 50
    c.eval_every = 0  # 0 = only at the end
    c.eval_steps = 0  # 0 = the whole eval set
    c.checkpoint_every = 0  # 0 = only at the end
    c.keep_checkpoints = 3  # the last N are kept ...
    c.best_metric = ""  # ... plus the best by this eval metric ("" = none), e.g. "accuracy"
    c.best_mode = "max"  # "max" | "min"
    c.init_from = ""  # workdir, checkpoint path, hf:PATH or hf:ORG/NAME[@REVISION] (Hub)
    c.allow_vocab_resize = False  # init_from: copy the overlapping rows of a resized vocab
    c.progress = True  # progress lines while training
    c.write_curves = True  # WORKDIR/curves.png (pjx.plot) when a run ends
    # Chained stages: (("name", {"dotted.key": value, ...}), ...), each run in WORKDIR/name.
    # An init_from of "stage:NAME" means WORKDIR/NAME.
    c.stages = ()
    # After the stages, one line comparing their last eval `metric`: (("label", "stage"), ...),
    # the first against each other, e.g. "from pretraining: 0.86 accuracy; from scratch: ...".
    c.compare = ml_collections.ConfigDict(dict(stages=(), metric="accuracy"))
    return c


def make_smoke(config, *, seq_len: int = 32, source: str = "embedded") -> None:
    """Turns a config into its `smoke` variant in place: the tiny preset, 2 steps on the
    built-in corpus (or `source`), a 512-piece vocabulary if it trains one, no checkpoints
    before the end. Every config's smoke variant must train and evaluate in seconds on CPU."""
    c = config
    c.model.size = "tiny"
    if source:
        c.data.source, c.eval_data.source = f"{source}[:90%]", f"{source}[90%:]"
    c.data.seq_len = seq_len
    spec = parse_spec(c.data.tokenizer) if c.data.get("tokenizer") else None
    if spec is not None and (spec.kind, spec.path) == ("train", "sentencepiece"):
        c.data.tokenizer = str(spec.with_params(vocab_size=512))
    c.batch_size, c.steps, c.eval_steps = 8, 2, 2
    c.optimizer.warmup_steps = 1
    c.log_every, c.eval_every, c.checkpoint_every = 1, 0, 0


def load(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`path/to/config.py[:ARG]` + overrides -> ConfigDict (references unresolved)."""
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


# ------------------------------------------------------------------------ overrides
def _model_fields(config) -> dict:
    """Config dataclass fields of the configured model family ({} for an unknown family)."""
    family = models.MODELS.get(config.model.get("name"))
    return {} if family is None else {f.name: f for f in dataclasses.fields(family.Config)}


def _open_keys(config, section: str) -> dict:
    """Keys a section accepts beyond those the config file wrote -> their default value:
    model -> the family's Config fields, task_args -> the task's options, eval_data ->
    the data keys."""
    if section == "model":
        return {
            n: None if f.default is dataclasses.MISSING else f.default
            for n, f in _model_fields(config).items()
        }
    if section == "task_args" and config.get("task") in tasks.TASKS:
        task = tasks.get(config.task)
        return {n: task.defaults.get(n) for n in task.arg_names()}
    if section == "eval_data":
        return {k: v for k, v in config.data.items() if k not in TRAIN_ONLY_DATA_KEYS}
    return {}


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


def _parse(key, value, current, parse):
    if not (parse and isinstance(value, str)):
        return value
    try:
        return parse_value(value, current)
    except ValueError as e:
        kind = type(current).__name__
        raise ConfigError(f"{key}: cannot parse {value!r} as {kind}") from e


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
        extra = _open_keys(config, parts[0]) if len(parts) == 2 else {}
        if leaf not in extra:
            _unknown(config, key)
        with node.unlocked():
            node[leaf] = _parse(key, value, extra[leaf], parse)
        return
    value = _parse(key, value, node[leaf], parse)
    if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[leaf] = value
    except TypeError:  # e.g. a None-typed field set before; rebuild without the type lock
        with node.unlocked():
            del node[leaf]
            node[leaf] = value


def _unknown(config, key):
    valid = flat_keys(config)
    for section in ("model", "task_args", "eval_data"):
        valid += [f"{section}.{k}" for k in _open_keys(config, section)]
    close = difflib.get_close_matches(key, sorted(set(valid)), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown config key {key!r}.{hint} Every key with its value: "
        "`pjx config --config FILE` (a run saves its own in WORKDIR/config.json)."
    )


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
        teacher = str((c.get("distill") or {}).get("teacher") or "")
        if teacher.startswith("stage:"):  # a teacher trained by an earlier stage
            c.distill.teacher = os.path.join(workdir, teacher[len("stage:") :])
        out.append((os.path.join(workdir, name), c))
    return out


def first_stage(config) -> ml_collections.ConfigDict:
    """A chained config's first stage (the pretraining one, without command-line
    overrides); the config itself otherwise (what `pjx bench / privacy / audit / data`
    read)."""
    if config.get("stages"):
        return stage_configs(config, "", ())[0][1]
    return config


def to_json(config) -> str:
    """The config as JSON (references resolved), e.g. for WORKDIR/config.json."""
    return json.dumps(config.copy_and_resolve_references().to_dict(), indent=1, default=str)


def describe(config) -> str:
    """One line per top-level key (sections as compact JSON; `eval_data` as what differs
    from `data`): the run's values at a glance."""
    c = config.copy_and_resolve_references()
    lines = []
    for k, v in c.items():
        v = v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
        if k == "eval_data":  # only what differs from data (the rest is inherited)
            v = {e: x for e, x in v.items() if e == "source" or c.data.get(e) != x}
        lines.append(f"  {k}: {json.dumps(v, default=str)}")
    return "config:\n" + "\n".join(lines)
