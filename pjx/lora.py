"""LoRA (Hu et al. 2021): low-rank updates W + (alpha / r) A B on chosen kernels, the rest
frozen. No model code knows about it: `adapted(model, cfg)` runs the model under a flax
method interceptor that, for every `pjx.nn.dense.Dense` whose path matches `lora.targets`, adds
the low-rank path x -> (dropout(x) A) B * alpha / r next to x W and creates A [in, r]
(small random) and B [r, out] (zeros: at initialisation the model is the base model) as
`lora_a` / `lora_b` beside the kernel.

    model = pjx.lora.adapted(models.create("bert", "base", num_labels=2), lora_cfg)
    params = model.init(...)                 # base parameters + lora_a / lora_b
    mask = pjx.lora.trainable(params, lora_cfg, "bert")   # adapters + new heads
    merged = pjx.lora.merge(params, lora_cfg)            # plain parameters, W + scale A B

Only the adapters and the task's own heads (`lora.trainable`, default per family: the
classifier) train; frozen weights get no optimizer state, and since their gradients are
never used XLA does not compute them. Hugging Face PEFT adapters go both ways
(pjx.convert.to_peft, `init_from=peft:DIR`).
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from pjx import models
from pjx.nn.dense import Dense

# `config.lora` and its defaults (pjx.config holds it as a ConfigDict); rank 0 = off.
DEFAULTS = dict(
    rank=0,
    alpha=16.0,  # the update is scaled by alpha / rank (PEFT's lora_alpha)
    dropout=0.0,  # on the adapter's input, in training
    targets="",  # regex on Dense paths; "" = the family default (TARGETS); "all-linear"
    # = every Dense inside the layer stack (not the heads)
    trainable="",  # regex on other parameters that train fully ("" = the family's heads)
)
# Attention query / value projections (Hu et al. 2021, sec. 7.1; PEFT's defaults).
TARGETS = {
    "bert": r"attention/self/(query|value)$",
    "gpt2": r"attn/c_attn$",  # GPT-2 fuses q, k, v in one kernel (PEFT targets it whole)
    "t5": r"(SelfAttention|EncDecAttention)/(q|v)$",
    "vit": r"attention/attention/(query|value)$",
    "llama": r"self_attn/(q_proj|v_proj)$",
    "modernbert": r"attn/Wqkv$",  # fused q, k, v (as GPT-2's c_attn)
}
# Heads that are new for a fine-tuning task and so train fully (PEFT's modules_to_save).
HEADS = {"bert": r"^(pre_)?classifier/", "vit": r"^classifier/", "gpt2": r"$^", "t5": r"$^",
         "llama": r"$^", "modernbert": r"^classifier/"}  # fmt: skip
ADAPTER_NAMES = ("lora_a", "lora_b")


def enabled(cfg) -> bool:
    return bool(cfg) and int(cfg.get("rank") or 0) > 0


def scale(cfg) -> float:
    return float(cfg["alpha"]) / int(cfg["rank"])


def targets(cfg, family: str) -> str:
    """The regex on Dense module paths ("bert/encoder/layer_0/attention/self/query"; a
    scanned stack drops the _0) whose kernels get adapters."""
    chosen = cfg.get("targets") or TARGETS[family]
    if chosen == "all-linear":  # PEFT's name: every linear layer of the blocks
        stacks = "|".join(re.escape(s) for s in models.MODELS[family].STACKS)
        return rf"^({stacks})(_\d+)?/"
    return chosen


def interceptor(cfg, family: str):
    """The flax method interceptor that adds the low-rank path to matching Dense layers."""
    pattern, r, s = re.compile(targets(cfg, family)), int(cfg["rank"]), scale(cfg)
    rate = float(cfg.get("dropout") or 0.0)

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        y = next_fun(*args, **kwargs)
        if not (
            isinstance(module, Dense)
            and context.method_name == "__call__"
            and pattern.search("/".join(module.path))
        ):
            return y
        x = args[0]
        n_in, dtype = module.n_in, y.dtype
        fan_in = math.prod(x.shape[-n_in:])
        # A as PEFT's kaiming-uniform(a=sqrt(5)) Linear init: U(+-1/sqrt(fan_in)); B zeros.
        a = module.param("lora_a", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                         (fan_in, r))  # fmt: skip
        b = module.param("lora_b", nn.initializers.zeros, (r, math.prod(module.features)))
        x = x.reshape(*x.shape[:-n_in], fan_in)
        if rate > 0 and module.has_rng("dropout"):  # an rng is passed only in training
            keep = jax.random.bernoulli(module.make_rng("dropout"), 1 - rate, x.shape)
            x = jnp.where(keep, x / (1 - rate), 0)
        delta = (x.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype)
        return y + (s * delta).reshape(y.shape)

    return intercept


class Adapted:
    """A model whose `init` / `apply` run under the LoRA interceptor; everything else
    (`config`, methods passed by name) is the wrapped model's."""

    def __init__(self, model, cfg, family: str):
        self.model, self.lora, self.family = model, dict(cfg), family
        self._intercept = interceptor(cfg, family)

    def init(self, *args, **kwargs):
        with nn.intercept_methods(self._intercept):
            return self.model.init(*args, **kwargs)

    def apply(self, *args, **kwargs):
        with nn.intercept_methods(self._intercept):
            return self.model.apply(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def adapted(model, cfg, family: str):
    return Adapted(model, cfg, family) if enabled(cfg) else model


def is_adapter(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def trainable(params, cfg, family: str):
    """Bool pytree like `params`: True for the adapters and the fully trained heads."""
    heads = re.compile(cfg.get("trainable") or HEADS[family])

    def keep(path, _):
        p = jax.tree_util.keystr(path, simple=True, separator="/")
        return is_adapter(p) or bool(heads.search(p))

    return jax.tree_util.tree_map_with_path(keep, params)


def merge(params, cfg) -> dict:
    """Plain parameters: each adapted kernel W + scale * (A B) reshaped to W, adapters
    dropped (a scanned stack's adapters carry its layer axis)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    s = scale(cfg)
    out = {}
    for path, x in flat.items():
        if is_adapter(path):
            continue
        module = path.rsplit("/", 1)[0]
        if path.endswith("/kernel") and f"{module}/lora_a" in flat:
            a, b = flat[f"{module}/lora_a"], flat[f"{module}/lora_b"]
            x = x + s * jnp.reshape(jnp.matmul(a, b), x.shape).astype(x.dtype)
        out[path] = x
    return traverse_util.unflatten_dict(out, sep="/")


def check(params, cfg, family: str) -> None:
    """Refuses a target regex that adapts nothing (the run would train only the heads)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    if not any(is_adapter(p) for p in flat):
        dense = sorted({p.rsplit("/", 1)[0] for p in flat if p.endswith("/kernel")})
        raise ValueError(
            f"lora.targets={targets(cfg, family)!r} matches no Dense layer of this {family} "
            f"model; its Dense layers are e.g. {dense[:4]} (leave lora.targets empty for "
            f"the default {TARGETS[family]!r}, or set 'all-linear')"
        )


def count(params, mask) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
    flags = jax.tree.leaves(mask)
    return sum(n for n, f in zip(sizes, flags) if f), sum(sizes)
