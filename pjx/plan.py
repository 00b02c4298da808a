"""A run resolved once: the typed, frozen `Plan` that the engine reads.

`pjx.config` turns what a user writes (a ConfigDict and its overrides) into a resolved
config, and `pjx.run.resolve_run` adds what only the workdir knows (the tokenizer, the
DP-SGD plan of this start); `from_config` then reads that resolved config once, by key,
into the dataclasses below. `pjx.train.build`, `pjx.loop.fit` and `pjx bench` read fields
of the plan, never keys of the config: every default is filled in here, and a new
feature adds a field here rather than a `.get(key) or default` at each place that needs it.

The resolved config itself travels along as `Plan.config`: it is what WORKDIR/config.json
saves and prints. A plain nested dict with a resolved config's keys makes a plan too
(benchmarks/gpu_bench.py, on hosts without ml_collections), through the same function.

    plan = pjx.plan.from_config(pjx.resolution.resolve(config, tokenizer))
    setup = pjx.train.build(plan, tokenizer=tokenizer)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pjx import grads, lora, optim, privacy


@dataclasses.dataclass(frozen=True)
class Model:
    family: str  # a key of pjx.models.MODELS
    size: str  # the preset the fields started from
    fields: dict  # every other `config.model` field (the family's Config fields)


@dataclasses.dataclass(frozen=True)
class Batch:
    """How many rows a step reads and how they are drawn."""

    rows: int  # physical rows of a training batch: the padded Poisson batch under DP-SGD
    expected_rows: int  # `batch_size`: the rows a step averages over
    accum_steps: int  # slices one step's gradient is summed over (inside the jitted step)
    eval_rows: int  # rows of an eval batch
    poisson_rate: float | None = None  # DP-SGD's Poisson sampling rate q; None = shuffled


@dataclasses.dataclass(frozen=True)
class Trainable:
    """Which parameters train: all but those `freeze` matches, and with LoRA only the
    adapters and the task's heads (`heads`, a regex on parameter paths)."""

    freeze: str = ""  # optimizer.freeze
    lora: dict | None = None  # config.lora when LoRA is on
    heads: str = ""  # pjx.lora.HEADS of the family


@dataclasses.dataclass(frozen=True)
class Loop:
    """What pjx.loop.fit does besides stepping."""

    steps: int
    seed: int
    log_every: int
    eval_every: int  # 0 = only at the end
    eval_steps: int  # 0 = the whole eval set
    length_bucket: int  # trim a batch's padding to a multiple of this (0 = never)
    data_mode: str  # data.mode, named in a slow-input warning
    stall_s: float | None = None  # watchdog.stall_s (None = derived from step times)
    profile_start: int = 0
    profile_steps: int = 0  # 0 = no profile


@dataclasses.dataclass(frozen=True)
class Plan:
    model: Model
    task: str  # a key of pjx.tasks.TASKS
    task_args: dict  # the task's options, defaults filled (pjx.resolution.resolve)
    batch: Batch
    optimizer: dict  # config.optimizer over pjx.optim.DEFAULTS
    ema_decay: float  # optimizer.ema_decay, checked: 0 = off
    trainable: Trainable
    loop: Loop
    mesh: dict  # config.mesh (pjx.sharding.make_mesh)
    data: dict  # config.data (its `seq_len` shapes the model's example inputs)
    eval_data: dict  # config.eval_data (data's keys where it sets none: pjx.config)
    # DP-SGD's mechanism for the step (pjx.grads), None without DP-SGD.
    dp: grads.DP | None = None
    config: Any = None  # the resolved config: WORKDIR/config.json

    @property
    def private(self) -> bool:
        return self.dp is not None

    @property
    def num_labels(self) -> int:
        return int(self.model.fields.get("num_labels") or 0)

    @property
    def seq_len(self) -> int | None:
        return int(self.data.get("seq_len") or 0) or None


def from_config(config) -> Plan:
    """The plan of a resolved config (pjx.resolution.resolve; under DP-SGD after
    pjx.resolution.with_privacy has filled in the noise and padded batch of this start). The
    one place that reads the run config by key: a ConfigDict or a plain dict."""
    model, family = _plain(config["model"]), config["model"]["name"]
    fields = {k: v for k, v in model.items() if k not in ("name", "size")}
    opt = optim.with_defaults(_plain(config["optimizer"]))
    ema_decay = float(opt["ema_decay"] or 0.0)
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(
            f"optimizer.ema_decay={ema_decay}: a moving average's decay is in [0, 1) "
            "(0 = off; 0.99 - 0.9999 are usual)"
        )
    lora_cfg = _plain(config.get("lora") or {})
    trainable = Trainable(
        freeze=str(opt["freeze"] or ""),
        lora={**lora.DEFAULTS, **lora_cfg} if lora.enabled(lora_cfg) else None,
        heads=lora.HEADS[family],
    )
    data, dp = _plain(config["data"]), _plain(config.get("dp") or {})
    return Plan(
        model=Model(family, str(model["size"]), fields),
        task=str(config["task"]),
        task_args=_plain(config["task_args"]),
        batch=_batch(config, opt, dp),
        optimizer=opt,
        ema_decay=ema_decay,
        trainable=trainable,
        loop=_loop(config, data),
        mesh=_plain(config["mesh"]),
        data=data,
        eval_data=_plain(config.get("eval_data") or data),
        dp=_mechanism(config, dp),
        config=config,
    )


def _batch(config, opt, dp: dict) -> Batch:
    expected = int(config["batch_size"])
    private = privacy.enabled(dp)
    poisson = private and dp.get("sampling", "poisson") == "poisson"
    return Batch(
        rows=int(dp.get("padded_batch_size") or 0) or expected,
        expected_rows=expected,
        accum_steps=int(opt["accum_steps"] or 1),
        eval_rows=int(config.get("eval_batch_size") or 0) or expected,
        poisson_rate=float(dp["sampling_rate"]) if poisson and dp.get("sampling_rate") else None,
    )


def _loop(config, data) -> Loop:
    profile = _plain(config.get("profile") or {})
    stall = (_plain(config.get("watchdog") or {})).get("stall_s")
    return Loop(
        steps=int(config["steps"]),
        seed=int(config.get("seed") or 0),
        log_every=int(config.get("log_every") or 50),
        eval_every=int(config.get("eval_every") or 0),
        eval_steps=int(config.get("eval_steps") or 0),
        length_bucket=int(data.get("length_bucket") or 0),
        data_mode=str(data.get("mode") or ""),
        stall_s=None if stall is None else float(stall),
        profile_start=int(profile.get("start_step") or 0),
        profile_steps=int(profile.get("steps") or 0),
    )


def _mechanism(config, dp: dict) -> grads.DP | None:
    """DP-SGD's step mechanism: the noise this start runs with (planned by pjx.run)."""
    if not privacy.enabled(dp):
        return None
    return grads.DP(
        l2_norm_clip=float(dp["l2_norm_clip"]),
        noise_multiplier=float(dp["noise_multiplier"]),
        expected_batch_size=int(config["batch_size"]),
        microbatch_size=int(dp.get("microbatch_size") or 0),
        clipping=privacy.clipping_method(dp, config["model"]),
    )


def _plain(section) -> dict:
    """A config section as a plain dict (a ConfigDict's references resolved)."""
    if hasattr(section, "to_dict"):
        return section.copy_and_resolve_references().to_dict()
    return dict(section)
