"""Run configs: config files, `--config.a.b=value` overrides, stages, and resolution.

A config file is a Python file defining `get_config(arg=None)` that returns an
`ml_collections.ConfigDict` built on `base_config()`; `path.py:ARG` passes ARG. Overrides
are parsed by the existing field's type (like ml_collections' `config_flags`); an unknown
key fails at once naming the closest valid keys.

Values derived from others are written as references, so they follow the command line:
`c.optimizer.warmup_steps = c.get_ref("steps") // 10` gives 50 warm-up steps under
`--config.steps=500`, and `--config.optimizer.warmup_steps=20` replaces the rule. Each
`eval_data` key not set explicitly is `data`'s.

`resolve` derives everything else in one place, after the overrides: the references,
`eval_data`, the architecture an `init_from` source fixes, the vocabulary size the
tokenizer fixes, the model heads the task implies. Its result is what a run uses, prints
at its start and saves as WORKDIR/config.json.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import ml_collections

from pjx import (
    data,
    hf,
    init_from,
    lora,
    metrics_log,
    models,
    optim,
    privacy,
    sharding,
    tasks,
    watchdog,
)
from pjx import teacher as teacher_lib
from pjx.privacy import private_data
from pjx.tokenizers import parse_spec
from pjx.values import parse_bool

# Keys of `data` that `eval_data` does not take: the run has one tokenizer.
TRAIN_ONLY_DATA_KEYS = ("tokenizer",)
log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------- resolution
# Counts a run reads: the least value each may take, and what it counts.
COUNTS = {
    "batch_size": (1, "examples per step, over all devices"),
    "eval_batch_size": (0, "examples per eval step; 0 = batch_size"),
    "steps": (0, "training steps"),
    "eval_every": (0, "steps between evaluations; 0 = only at the end"),
    "eval_steps": (0, "batches per evaluation; 0 = the whole eval set"),
    "checkpoint_every": (0, "steps between checkpoints; 0 = only at the end"),
    "keep_checkpoints": (1, "the last checkpoints kept (besides the best one)"),
    "log_every": (1, "steps between train metrics lines"),
}


def _check_counts(c) -> None:
    for key, (low, what) in COUNTS.items():
        v = c.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(f"{key}={v!r}: must be an integer >= {low} ({what})")


def _check_telemetry(c) -> None:
    try:
        watchdog.check(c.watchdog.stall_s)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    p = c.profile
    for key in ("start_step", "steps"):
        v = p.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"profile.{key}={v!r}: must be an integer >= 0")
    if p.steps and p.start_step + p.steps > c.steps:
        raise ConfigError(
            f"profile.start_step={p.start_step} + profile.steps={p.steps} runs past "
            f"steps={c.steps}: trace a window inside the run (e.g. "
            f"--config.profile.start_step={max(c.steps - p.steps, 0)})"
        )


def resolve_data(config) -> ml_collections.ConfigDict:
    """`config` with its references resolved and `eval_data` spelled out in full (data's
    keys, then eval_data's own). Needs no tokenizer: what the tokenizer is built from.
    An `init_from` of `hf:` / `peft:` + a Hub id becomes its local snapshot folder."""
    c = config.copy_and_resolve_references()
    _check_counts(c)
    _check_telemetry(c)
    if c.get("init_from"):
        c.init_from = hf.folder.local_source(c.init_from)
    own = c.eval_data.to_dict()
    unknown = sorted(set(own) - set(c.data) - {"source"})
    if unknown:
        raise ConfigError(f"eval_data keys {unknown} are not data keys: {sorted(c.data)}")
    inherited = {k: v for k, v in c.data.items() if k not in TRAIN_ONLY_DATA_KEYS}
    c.eval_data = ml_collections.ConfigDict({**inherited, **own})
    if c.task == "distill":  # a teacher that cannot serve fails before the workdir exists
        c.distill.teacher = teacher_lib.local(str(c.distill.teacher or ""))
        teacher_lib.resolve(c)
    if privacy.enabled(c.dp):
        privacy.check(c.dp)
        privacy.clipping_method(c.dp, c.model)
        task = tasks.get(c.task)
        if not task.per_example:
            raise ConfigError(
                f"task {task.name!r} cannot train with DP-SGD (dp.noise_multiplier / "
                "dp.target_epsilon): its loss couples the examples of a batch (in-batch "
                "negatives), so clipping one example's gradient does not bound its influence "
                "on the update. Train it without dp."
            )
        private_data.check_run(c, task)
    return c


def task_options(c, task) -> dict:
    """`task_args` plus the task's own config block (`Task.section`, e.g. `electra`); a
    key given in both with different values is an error."""
    own = c.task_args.to_dict()
    if not task.section:
        return own
    block = c.get(task.section)
    if block is None:  # a config built without base_config's block: the task's defaults
        return own
    block = block.to_dict()
    clash = sorted(k for k in set(own) & set(block) if own[k] != block[k])
    if clash:
        raise ConfigError(
            f"task_args {clash} are options of config.{task.section}: set "
            f"--config.{task.section}.{clash[0]}=... instead"
        )
    return {**own, **block}


def resolve(config, tokenizer=None) -> ml_collections.ConfigDict:
    """The config a run uses: every derived value filled in, every model field spelled out.

    - references resolved, `eval_data` complete (`resolve_data`);
    - with `init_from`, the body's architecture from the source (fields the config sets
      itself win; the task decides the heads; how to compute stays the run's own);
    - `model.vocab_size` from the tokenizer unless set;
    - the heads the task implies (`Task.model_fields`); setting one of them otherwise is an
      error, as is a model family the task does not run on;
    - unless set, `model.pooling='mean'` for a classifier from a run whose pooler never
      trained (`pjx.init_from.default_pooling`, said in a log line);
    - `task_args` checked against the task's options, with their defaults filled in (and
      the task's own block folded in: `electra`, `task_options`).
    """
    c = resolve_data(config)
    task = tasks.get(c.task)
    family = c.model.name
    if family not in models.MODELS:
        raise ConfigError(f"model.name={family!r}: choose one of {sorted(models.MODELS)}")
    if family not in task.families:
        raise ConfigError(
            f"task {task.name!r} runs on model families {list(task.families)}, not {family!r}"
        )
    student = {}
    if task.name == "distill":  # the frozen teacher's architecture; every_other's student
        c.distill.teacher_model, student = teacher_lib.resolve(c)
    args = task.args(task_options(c, task))

    own = {k: v for k, v in c.model.items() if k not in ("name", "size")}
    fields = {}
    if str(c.get("init_from")).startswith("peft:") and not lora.enabled(c.lora):
        c.lora.update(hf.peft.lora_config(c.init_from[5:]))  # the adapter's own LoRA
    if c.get("init_from"):
        src_family, src_fields = init_from.source_model(c.init_from)
        if src_family != family:
            raise ConfigError(
                f"init_from {c.init_from} holds a {src_family!r} model but model.name is "
                f"{family!r}; set --config.model.name={src_family}."
            )
        skip = init_from.HEAD_FIELDS + init_from.RUNTIME_FIELDS
        fields = {k: v for k, v in src_fields.items() if k not in skip}
    fields.update(student)
    fields.update(own)
    if tokenizer is not None and "vocab_size" not in fields:
        fields["vocab_size"] = int(tokenizer.vocab_size)
    if tokenizer is not None and fields["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids (their embeddings would be garbage): leave "
            "model.vocab_size unset, or use a tokenizer that fits"
        )
    for k, v in task.model_fields(family, args).items():
        if k in own and own[k] != v:
            raise ConfigError(
                f"model.{k}={own[k]!r} contradicts task {task.name!r} (which needs {v!r}); "
                f"leave model.{k} unset: the task decides it"
            )
        fields[k] = v
    # A BERT pooler that never trained: the mean (ModernBERT has no pooler; its `head` trains
    # with the MLM loss, and its classifier reads [CLS] through it).
    if c.get("init_from") and "pooling" not in own and family == "bert":
        pooling, why = init_from.default_pooling(c.init_from, fields)
        if pooling:
            fields["pooling"] = pooling
            log.info(why)
    model_config = models.make_config(family, c.model.size, **fields)
    task.check_model(model_config)
    c.model = ml_collections.ConfigDict(
        dict(name=family, size=c.model.size, **dataclasses.asdict(model_config))
    )
    c.task_args = ml_collections.ConfigDict(args)
    return c


def with_privacy(config, plan, data_fingerprint: str = "") -> ml_collections.ConfigDict:
    """`config` with its DP-SGD plan filled into `dp` (pjx.privacy.plan): the noise
    multiplier of the steps this start runs (calibrated when a target epsilon was asked
    for), delta, the sampling rate, the padded batch, N, the planned epsilon and the
    segments of the whole run, so config.json shows what the run used; and what the
    training data held (`data_fingerprint`), which a replayed step must read again."""
    c = copy.deepcopy(config)
    p = plan.to_dict()
    with c.dp.unlocked():
        for key in ("noise_multiplier", "delta", "sampling_rate", "padded_batch_size"):
            c.dp[key] = p[key]
        c.dp.num_examples, c.dp.planned_epsilon = p["num_examples"], p["epsilon"]
        c.dp.segments = json.dumps(p["segments"])
        c.dp.inherited_segments = json.dumps(p["inherited"])
        c.dp.data_fingerprint = data_fingerprint
    return c


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
