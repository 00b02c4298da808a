"""Run a saved model: load it, sample text, and score batches of examples.

    model, params, tokenizer = pjx.inference.load("runs/shakespeare")
    print(pjx.inference.generate("runs/shakespeare", "ROMEO:", max_new_tokens=200))

A checkpoint is self-contained: its resolved run config rebuilds the model and its
tokenizer folder the tokenizer (pjx.checkpoint.saved). Only the parameters are read (not
the optimizer state). The batch functions (class probabilities, greedy seq2seq) are what
`pjx predict` and `pjx eval` run over a data source (pjx.evaluation).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from pjx import distributed, sharding
from pjx.checkpoint.saved import Saved
from pjx.models import gpt2, llama, t5

log = logging.getLogger(__name__)


def load(source, **model_overrides):
    """(model, params, tokenizer or None) from a pjx workdir / checkpoint, `hf:PATH_OR_ID` or
    `peft:ADAPTER_DIR` (LoRA adapters come merged into the kernels).

    `model_overrides` change how it computes (e.g. `dtype="bfloat16"`), not its shapes.
    `hf:` / `peft:` may name a Hugging Face Hub id (pjx.hf.hub).
    """
    saved = Saved(source, model_overrides=model_overrides)
    return saved.model, jax.device_put(saved.params()), saved.tokenizer


def generate(
    source, prompt: str, *, max_new_tokens=100, temperature=0.8, top_k=None, seed=0
) -> str:
    """Continues `prompt` with a decoder (GPT-2, Llama family) saved at `source` (KV-cache
    sampling; longer than the model's context, the history is cut to a sliding window)."""
    model, params, tokenizer = load(source)
    sampler = Sampler(model, tokenizer, temperature=temperature, top_k=top_k, where=source)
    return sampler(params, prompt, max_new_tokens, jax.random.key(seed))


class Sampler:
    """prompt -> prompt + sampled continuation, for one decoder model (compiled once per
    length, reused across prompts)."""

    def __init__(self, model, tokenizer, *, temperature=0.8, top_k=None, where=""):
        if not isinstance(model, (gpt2.Model, llama.Model)):
            raise ValueError(
                f"{where} holds a {type(model).__module__} model; generation needs a "
                "decoder (gpt2, llama)"
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


# --------------------------------------------------------------------------- batches
def progress(iterable, total: int, what: str):
    """Yields `iterable`, logging progress every ~10% on long inputs."""
    every = max(total // 10, 1)
    for i, x in enumerate(iterable, 1):
        yield x
        if total >= 1000 and (i % every == 0 or i == total):
            log.info(f"{what}: {i}/{total}")


def probabilities(model, task, params, batches, mesh):
    """Class probabilities [C] (NumPy) per example of eval `batches` (pjx.data: the last
    batch padded with weight 0), in input order; `task.logits` of the model, sharded over
    `mesh`."""
    probs_fn = jax.jit(
        lambda p, b: jax.nn.softmax(task.logits(model, p, b).astype(jnp.float32), -1)
    )
    with sharding.context(mesh):
        for batch in progress(batches, len(batches), "predict (batches)"):
            b = dict(batch)
            weight = np.asarray(b.get("weight", np.ones(len(next(iter(b.values()))))))
            G = getattr(batches, "global_batch_size", len(weight) * jax.process_count())
            b = sharding.global_batch(b, sharding.batch_sharding(mesh, G))
            probs = np.asarray(distributed.host_value(probs_fn(params, b)))
            yield from probs[weight > 0]


def _until_eos(ids, eos: int, pad: int) -> list[int]:
    out = []
    for i in np.asarray(ids).tolist():
        if i == eos:
            break
        if i != pad:
            out.append(i)
    return out


def greedy_seq2seq(model, params, batches, tokenizer, max_new_tokens: int):
    """(generated ids, target ids, input ids) per example of eval `batches`, in input order:
    T5 greedy decoding of `max_new_tokens`, each list cut at the first EOS, padding dropped."""
    eos, pad = int(tokenizer.eos_id), int(tokenizer.pad_id or 0)
    gen = jax.jit(lambda p, x, m: t5.generate(model, p, x, m, max_new_tokens=max_new_tokens))
    for batch in progress(batches, len(batches), "generate (batches)"):
        b = dict(batch)
        weight = np.asarray(b.get("weight", np.ones(len(b["input_ids"]))))
        out = np.asarray(gen(params, b["input_ids"], b["attention_mask"]))
        for i in np.flatnonzero(weight > 0):
            yield (
                _until_eos(out[i], eos, pad),
                _until_eos(b["labels"][i], eos, pad),
                _until_eos(b["input_ids"][i], eos, pad),
            )
