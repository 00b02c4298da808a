"""The `Task` interface: the one place that says what an objective is.

A task is a subclass of `Task` in its own module of this package, listed in
`pjx.tasks.TASKS`. It owns

- its loss, pure and jit-able: `loss(model, params, batch, rng, *, train, **args)` ->
  `(mean loss, metrics)` where metrics are float32 sums and counts (`loss_sum`, `count`,
  ...) that add up exactly over micro-batches, eval batches and hosts, with an eval
  batch's `weight` [B] (0 on padding rows) folded into every count; and `finalize`, which
  turns summed metrics into the reported floats (host side);
- how a source's `Examples` become a table of fixed-shape arrays (`encode`: host side,
  once, cached) and how rows of that table become a batch (`make_batch`: in the Grain
  pipeline, with a per-batch NumPy rng for augmentation);
- the batch it expects (`batch_spec`: key -> `Spec`); `pjx bench` fills it with synthetic
  values and the tests check every pipeline against it;
- the model families it runs on, the model fields it implies (`model_fields`: which heads),
  what it needs of the model (`check_model`), and what it takes from the tokenizer
  (`runtime_args`: mask id, sentinel ids, ...).

`config.task_args` are the keyword-only arguments of the task's `loss` (plus the encoding
options among them, `nsp`); `defaults` gives each one's default. A task may keep some of
them in a top-level config block of its own (`section`, e.g. `config.electra`), which
`pjx.resolution.resolve` folds into the task's arguments.
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from pjx.examples import DataError


class Spec(NamedTuple):
    """One batch entry: shape, dtype and what synthetic values look like (`fill`):
    "tokens" (ids in the vocabulary), "ones", "zeros", "positions" (0..L-1 per row),
    "classes" (ints in [0, high)), "pixels" (standard normal floats)."""

    shape: tuple
    dtype: str
    fill: str
    high: int = 0


class Task:
    """Base class; see the module docstring. Subclasses set the class attributes and
    override what differs from the defaults below."""

    name: str = ""
    families: tuple[str, ...] = ()  # model families the task runs on
    unit: str = "tokens"  # what throughput counts: "tokens" | "examples"
    defaults: dict = {}
    # A top-level config block (config.<section>) holding some of the task's arguments.
    section: str = ""
    # True when the loss is a sum of independent per-example terms (DP-SGD's privacy unit);
    # False when examples interact (in-batch negatives).
    per_example: bool = True
    # How rows hold documents: "" (a row is an example), "optional" (documents packed into
    # rows unless `data.pack=none`, one row per document), "always" (rows cut from the
    # documents' concatenation). One document reaching rows beyond its own breaks DP-SGD's
    # row-level unit (pjx.privacy.private_data.check_run).
    packs: str = ""
    # Row arrays [B, L] whose tail past every row's attention_mask is padding: a batch may be
    # cut to a narrower width (data.length_bucket, pjx.train.trim_padding) without changing
    # its loss.
    padded_keys: tuple[str, ...] = ()

    # ----------------------------------------------------------------- objective
    def loss(self, model, params, batch, rng, *, train, **args):
        raise NotImplementedError

    def finalize(self, metrics) -> dict:
        raise NotImplementedError

    # ----------------------------------------------------------------- outputs
    # `scored` is the saved model on a data source (pjx.evaluation.Loaded): the task says
    # what to report, `scored` runs the model: `tokenizer`, `label_names()`,
    # `probabilities()` (class probabilities [C] per example), `continuations(n)` ((text,
    # text + n sampled tokens) per text), `generated()` ((generated, target, input) ids
    # per example, greedy) -- each per example of the source, in input order.
    def report(self, sums, scored) -> dict:
        """What `pjx eval` reports besides `finalize`'s metrics of the summed metrics `sums`:
        by default how many positions counted (`tokens`)."""
        return {"tokens": int(sums["count"])} if "count" in sums else {}

    def predictions(self, scored, *, max_new_tokens: int):
        """`pjx predict`'s lines: one JSON-able dict per example, in input order (an
        iterator); None when the task writes none."""
        return None

    # ----------------------------------------------------------------- model
    def model_fields(self, family: str, args: dict) -> dict:
        """Model `Config` fields this task fixes (its heads), given its arguments."""
        return {}

    def check_model(self, model_config) -> None:
        """Raises ValueError when the model cannot serve this task (e.g. no classes)."""

    def frozen_models(self, args: dict) -> tuple:
        """Models whose parameters the train / eval step takes, frozen, after its usual
        arguments and the loss after `rng` (distill's teacher): jit arguments sharded like
        parameters, never trained, optimized or checkpointed (pjx.train.Setup.frozen)."""
        return ()

    # ----------------------------------------------------------------- arguments
    def args(self, task_args: dict | None) -> dict:
        """`defaults` + `config.task_args`; an unknown name is an error listing the valid."""
        args = {**self.defaults, **dict(task_args or {})}
        unknown = sorted(set(args) - set(self.arg_names()))
        if unknown:
            raise ValueError(
                f"task_args {unknown} are not options of task {self.name!r}; valid: "
                f"{self.arg_names()}"
            )
        return args

    def arg_names(self) -> list[str]:
        params = inspect.signature(self.loss).parameters.items()
        return [n for n, p in params if p.kind == p.KEYWORD_ONLY and n != "train"]

    def runtime_args(self, args: dict, tokenizer, model_config) -> dict:
        """The loss's keyword arguments: `args` plus what the tokenizer / model fix
        (hashable: lists become tuples)."""
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()}

    # ----------------------------------------------------------------- data
    def needs_labels(self, data_cfg) -> bool:
        return False

    def encoding_key(self, args: dict, seed: int) -> dict:
        """What besides the data settings changes `encode`'s output (part of the cache key)."""
        return {}

    def encode(self, ex, tokenizer, data_cfg, args: dict, seed: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def make_batch(self, rows: dict, rng, data_cfg, train: bool) -> dict:
        """Gathered table rows -> the batch (`batch_spec`'s keys)."""
        return rows

    def batch_spec(self, batch_size: int, data_cfg, model_config, args: dict) -> dict:
        raise NotImplementedError


# ------------------------------------------------------------------------ helpers
def weight(batch, B):
    """The eval `weight` [B] (0 on rows that only pad the last batch), ones in training."""
    w = batch.get("weight")
    return jnp.ones((B,), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)


def apply(model, params, rng, train, *args, **kw):
    """`model.apply` with dropout from `rng` in training, deterministic in evaluation."""
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, *args, deterministic=not train, rngs=rngs, **kw)


def lm_finalize(m) -> dict:
    """Loss, token accuracy and perplexity of a language-modelling objective."""
    count = max(float(m["count"]), 1e-12)
    nll = float(m.get("nll_sum", m["loss_sum"]))
    return {
        "loss": float(m["loss_sum"]) / count,
        "accuracy": float(m["correct"]) / count,
        # Perplexity from the plain NLL (equals exp(loss) without smoothing / z-loss);
        # capped so a diverged model logs a finite number.
        "perplexity": math.exp(min(nll / count, 80.0)),
        "count": float(m["count"]),
    }


def special_id(tokenizer, name: str, task: str) -> int:
    """The tokenizer's `name` special id (cls, sep, mask, eos, ...); an error names the task."""
    value = getattr(tokenizer, f"{name}_id", None)
    if value is None:
        raise DataError(f"task {task} needs a tokenizer with a {name} token (data.tokenizer)")
    return int(value)


def pad_id(tokenizer) -> int:
    """The padding id (0 when the tokenizer has none)."""
    value = getattr(tokenizer, "pad_id", None)
    return 0 if value is None else int(value)


def require_text(ex, task: str):
    if ex.texts is None:
        raise DataError(f"{ex.origin} has no text for task {task}")


def ids_spec(B, L, *names, fill="tokens") -> dict:
    """Int32 [B,L] entries."""
    return {n: Spec((B, L), "int32", fill) for n in names}
