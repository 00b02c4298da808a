"""Load a trained model from a workdir or checkpoint, and generate text with it.

    model, params, tokenizer = pjx.inference.load("runs/shakespeare")
    print(pjx.inference.generate("runs/shakespeare", "ROMEO:", max_new_tokens=200))

A checkpoint is self-contained: its resolved run config rebuilds the model and its
tokenizer folder the tokenizer. Only the parameters are read (not the optimizer state).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pjx import checkpoint, hf, init_from, lora, models, tokenizers
from pjx.models import gpt2


def load(source, **model_overrides):
    """(model, params, tokenizer or None) from a pjx workdir / checkpoint, `hf:PATH_OR_ID` or
    `peft:ADAPTER_DIR` (LoRA adapters come merged into the kernels).

    `model_overrides` change how it computes (e.g. `dtype="bfloat16"`), not its shapes.
    `hf:` / `peft:` may name a Hugging Face Hub id (pjx.hf.hub).
    """
    source = hf.folder.local_source(source)  # a Hub id: its local snapshot
    family, fields = init_from.source_model(source)
    model = models.create(family, "tiny", **{**fields, **model_overrides})
    # A LoRA run's checkpoint holds adapters beside the kernels: read them with the adapted
    # model, then merge (W + scale A B), so inference runs the plain model at full speed.
    lora_cfg = run_lora(source)
    adapted = lora.adapted(model, lora_cfg, family)
    inputs = models.example_inputs(family, model.config, 1)
    abstract = jax.eval_shape(lambda: adapted.init(jax.random.key(0), **inputs)["params"])
    params, report = init_from.init_from(source, nn.meta.unbox(abstract), verbose=False)
    if report.new:
        missing = ", ".join(p for p, _ in report.new[:5])
        raise ValueError(f"{source} lacks parameters the model needs: {missing} ...")
    params = jax.tree.map(jnp.asarray, params)
    if lora.enabled(lora_cfg):
        params = lora.merge(params, lora_cfg)
    if str(source).startswith("peft:"):  # the tokenizer is the base model's
        source = "hf:" + hf.peft_base(str(source)[5:])
    folder = checkpoint.tokenizer_dir(source)
    tokenizer = tokenizers.load(str(folder)) if folder is not None else None
    return model, params, tokenizer


def run_lora(source) -> dict:
    """The LoRA settings `source` was trained with: a PEFT adapter's, a pjx run's `lora`
    block, {} for a Hugging Face folder (and runs without LoRA)."""
    source = str(source)
    if source.startswith("peft:"):
        return hf.peft.lora_config(source[5:])
    if source.startswith("hf:"):
        return {}
    return dict(checkpoint.read_checkpoint_config(source).get("lora") or {})


def generate(
    source, prompt: str, *, max_new_tokens=100, temperature=0.8, top_k=None, seed=0
) -> str:
    """Continues `prompt` with a GPT-2 model saved at `source` (KV-cache sampling; longer
    than the model's context, the history is cut to a sliding window)."""
    model, params, tokenizer = load(source)
    sampler = Sampler(model, tokenizer, temperature=temperature, top_k=top_k, where=source)
    return sampler(params, prompt, max_new_tokens, jax.random.key(seed))


class Sampler:
    """prompt -> prompt + sampled continuation, for one GPT-2 model (compiled once per
    length, reused across prompts)."""

    def __init__(self, model, tokenizer, *, temperature=0.8, top_k=None, where=""):
        if not isinstance(model, gpt2.Model):
            raise ValueError(
                f"{where} holds a {type(model).__module__} model; generation needs gpt2"
            )
        if tokenizer is None:
            raise ValueError(f"{where} has no tokenizer folder to encode the prompt with")
        self.model, self.tokenizer = model, tokenizer
        self._sample = jax.jit(
            lambda p, x, r, n: gpt2.generate(
                model, p, x, n, rng=r, temperature=temperature, top_k=top_k
            ),
            static_argnums=3,
        )

    def __call__(self, params, prompt: str, max_new_tokens: int, rng) -> str:
        tokenizer = self.tokenizer
        ids = tokenizer.encode(prompt) or [tokenizer.eos_id or 0]
        ctx, left = self.model.config.max_position_embeddings, max_new_tokens
        while left > 0:
            # Within the context: one call. Beyond it: slide a window, half a context at a
            # time (each chunk's tokens see between ctx/2 and ctx tokens of history).
            n = left if len(ids) + left <= ctx else min(left, max(ctx // 2, 1))
            window = ids[-(ctx - n) :]
            rng, sub = jax.random.split(rng)
            out = self._sample(params, jnp.asarray([window], jnp.int32), sub, n)
            ids += np.asarray(out[0, len(window) :]).tolist()
            left -= n
        return tokenizer.decode(ids)
