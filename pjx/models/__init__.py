"""Model families and the one place that builds them from a name and a size preset."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from pjx.models import bert, electra, gpt2, llama, modernbert, t5, vit
from pjx.nn.stack import check_remat

MODELS = {"bert": bert, "gpt2": gpt2, "t5": t5, "vit": vit, "llama": llama,
          "modernbert": modernbert}  # fmt: skip
# The layer stacks of every family (`scan_layers`: one stacked child instead of NAME_i).
STACKS = tuple(p for m in MODELS.values() for p in m.STACKS) + electra.STACKS


def make_config(name: str, size: str | None = "tiny", **overrides):
    """`Config` of family `name` at preset `size` (None: the dataclass defaults), with
    field overrides; an unknown field is an error listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    family = MODELS[name]
    if size is not None and size not in family.PRESETS:
        raise ValueError(f"unknown {name} size {size!r}; choose from {sorted(family.PRESETS)}")
    valid = [f.name for f in dataclasses.fields(family.Config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown {name} config field(s) {unknown}; valid fields: {valid}")
    preset = family.PRESETS[size] if size is not None else {}
    config = family.Config(**{**preset, **overrides})
    check_remat(config.remat)
    return config


def create(name: str, size: str = "tiny", **overrides):
    """The Linen `Model` of family `name`; its config is `model.config`. A BERT config with
    a `generator_size` is ELECTRA's generator + discriminator pair (pjx.models.electra)."""
    config = make_config(name, size, **overrides)
    if name == "bert" and config.generator_size:
        return electra.Model(config)
    return MODELS[name].Model(config)


def example_inputs(name: str, config, batch_size: int = 2, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape` (each family's
    own `example_inputs`; `seq_len` None: up to 128 positions)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name].example_inputs(config, batch_size, seq_len)


# ---------------------------------------------------------------- stacked layers
def stack_of(path: str) -> str | None:
    """The layer stack a scanned parameter path belongs to (`encoder/layer` of
    `encoder/layer/attention/...`), or None."""
    return next((p for p in STACKS if path.startswith(p + "/")), None)


def unstack_layers(flat: dict, take: Callable = lambda x, i: x[i]) -> dict:
    """Flat "a/b/c" params of a scanned model -> the unscanned layout: a stacked leaf
    `encoder/layer/...` [n, ...] becomes `encoder/layer_0/...` .. `layer_{n-1}/...`.
    `take(x, i)` takes layer i (default: indexing; for shape tuples pass
    `lambda s, i: s[1:]`). Other paths pass unchanged."""
    out = {}
    for path, x in flat.items():
        stack = stack_of(path)
        if stack is None:
            out[path] = x
            continue
        rest = path[len(stack) + 1 :]
        n = x[0] if isinstance(x, tuple) else x.shape[0]  # a shape tuple, or an array
        for i in range(int(n)):
            out[f"{stack}_{i}/{rest}"] = take(x, i)
    return out


def stack_layers(flat: dict, join: Callable = np.stack) -> dict:
    """The inverse of `unstack_layers`: `encoder/layer_{i}/...` leaves -> one stacked
    `encoder/layer/...` leaf, layers in order (`join(list)`, default np.stack)."""
    groups: dict[str, dict[int, object]] = {}
    out = {}
    for path, x in flat.items():
        m = next(
            (m for p in STACKS if (m := re.match(rf"^({re.escape(p)})_(\d+)/(.+)$", path))), None
        )
        if m is None:
            out[path] = x
            continue
        groups.setdefault(f"{m.group(1)}/{m.group(3)}", {})[int(m.group(2))] = x
    for path, by_layer in groups.items():
        if sorted(by_layer) != list(range(len(by_layer))):
            raise ValueError(f"{path}: layers {sorted(by_layer)} are not 0..n-1")
        out[path] = join([by_layer[i] for i in range(len(by_layer))])
    return out
