"""Resolution: a user's config (pjx.config) -> the config a run uses, every derived value
filled in. What a run prints at its start and saves as WORKDIR/config.json; pjx.plan then
reads it once into the typed plan the engine runs.

- `resolve_data`: references resolved, counts and telemetry checked, `eval_data` spelled
  out in full, `init_from` / the distillation teacher made local, DP-SGD's preconditions
  checked. Needs no tokenizer: what the tokenizer is built from.
- `complete` (after the tokenizer): the architecture an `init_from` source fixes, the
  vocabulary size the tokenizer fixes, the heads the task implies, the task's options.
  `resolve` is both.
- `with_privacy`: the DP-SGD plan of this start (pjx.privacy.plan) filled into `dp`.

    config = pjx.config.load("configs/glue.py:sst2,smoke")
    tokenizer = pjx.workdir.build_tokenizer(pjx.resolution.resolve_data(config), "runs/sst2")
    c = pjx.resolution.resolve(config, tokenizer)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

import ml_collections

from pjx import hf, init_from, lora, models, privacy, tasks, watchdog
from pjx import teacher as teacher_lib
from pjx.config import TRAIN_ONLY_DATA_KEYS, ConfigError
from pjx.privacy import private_data

log = logging.getLogger(__name__)

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
    return complete(resolve_data(config), tokenizer)


def complete(c, tokenizer=None) -> ml_collections.ConfigDict:
    """`resolve` after `resolve_data`: what a run does once its tokenizer is built from the
    data-resolved config (pjx.run), without resolving the data a second time."""
    c = c.copy_and_resolve_references()
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
        # A saved config's task_args hold the teacher as the version that wrote it resolved
        # it (without fields added since): derived, so the fresh resolution replaces it.
        if "teacher_model" in c.task_args:
            del c.task_args["teacher_model"]
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
