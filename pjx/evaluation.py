"""Score a trained model on any data source, and write its predictions, without training.

    pjx eval runs/sst2 --source tsv:dev.tsv                  # metrics; last line JSON
    pjx predict runs/sst2 --source tsv:test.tsv --out preds.jsonl

    from pjx import evaluation
    evaluation.evaluate("runs/sst2", "tsv:dev.tsv")["accuracy"]

A pjx run (workdir or checkpoint) brings its resolved config, tokenizer and (LoRA)
parameters (pjx.saved); the data source is read with the run's data settings (columns,
preset, sequence length) as its eval split: every example once, in input order. A Hugging
Face folder (`hf:DIR`) works where it has the task's head (a sequence classifier, an LM
head). The model runs over the examples in pjx.inference.
`overrides` (`key=value`, as `--config.key=value`) change the loaded config, e.g. the eval
batch size or, for a Hugging Face folder, `data.preset`.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path

import jax
import numpy as np

from pjx import inference
from pjx import run as run_lib
from pjx import train as train_lib
from pjx.data import overlap
from pjx.saved import Saved

log = logging.getLogger(__name__)


def _with_teacher(s: train_lib.Setup, config, source: str) -> train_lib.Setup:
    """`s` with a distillation run's teacher (distill.teacher), which must be the one it
    trained with (distill.teacher_hash)."""
    params, digest = run_lib.read_teacher(s, config)
    trained_with = str(config.distill.get("teacher_hash") or "")
    if trained_with and digest != trained_with:
        raise ValueError(
            f"{source} distilled from {config.distill.teacher}, whose parameters changed since "
            "(distill.teacher_hash differs): its distillation metrics cannot be recomputed"
        )
    return train_lib.with_frozen(s, (params,))


class Loaded:
    """A saved model ready to score on data source `uri`: its resolved config reading `uri`
    as the eval split, tokenizer, train.Setup and sharded params."""

    def __init__(self, source, uri: str, overrides=(), devices=None):
        self.saved = Saved(source, overrides)
        c = copy.deepcopy(self.saved.config)
        c.eval_data.source = uri  # read with the run's eval settings (preset, columns, ...)
        shared = 0
        if c.dp.get("planned_epsilon"):
            shared = overlap.shared_rows(uri, str(c.data.source), c.data)
        if shared:
            log.warning(
                f"{source} was trained with DP-SGD on {c.data.source}: {shared} of the rows "
                f"of {uri} are that private data, and metrics on them, released without "
                "noise, are not covered by its epsilon"
            )
        self.config, self.tokenizer, self.source = c, self.saved.tokenizer, str(source)
        self.setup = train_lib.build(c, tokenizer=self.tokenizer, devices=devices)
        if self.setup.frozen_models:  # distill: the loss compares with its teacher
            self.setup = _with_teacher(self.setup, c, str(source))
        params = self.saved.params(merged=False, like=self.setup.abstract_state.params)
        self.params = jax.device_put(params, self.setup.state_shardings.params)
        self._data = None

    def batches(self):
        """The source's examples in input order (the last batch padded with weight 0),
        encoded once into a cache that lives as long as this object (re-iterable)."""
        if self._data is None:
            self._cache = tempfile.TemporaryDirectory(prefix="pjx_eval_")
            self._data = run_lib.build_data(
                self.config, self.tokenizer, train=False, workdir=self._cache.name,
                mesh=self.setup.mesh,
            )  # fmt: skip
        return self._data

    def plain(self):
        """(model, host params) to sample from: a LoRA run's adapters merged into the
        kernels, so generation runs the plain model."""
        model, params = self.setup.model, jax.device_get(self.params)
        if self.saved.lora:
            model = model.model  # the model inside lora.adapted's wrapper
        return model, self.saved.merge(params)


def evaluate(source, uri: str, overrides=(), devices=None) -> dict:
    """The task's metrics of `source` on data source `uri` (classification also the
    confusion matrix, rows = true labels), with `examples`: how many were scored."""
    run = Loaded(source, uri, overrides, devices)
    s = run.setup
    sums = train_lib.metric_sums(s, run.params, run.batches())
    if sums is None:
        raise ValueError(f"{uri} holds no example to evaluate")
    out = {"source": uri, "task": run.config.task, **s.task.finalize(sums)}
    if "confusion" in sums:
        confusion = np.asarray(sums["confusion"]).round().astype(int)
        out["confusion_matrix"] = confusion.tolist()
        out["labels"] = run.saved.label_names(uri)
        out["examples"] = int(confusion.sum())
    elif "count" in sums:
        out["tokens" if run.config.task != "classify" else "examples"] = int(sums["count"])
    if run.config.task == "seq2seq":  # greedy generation, compared token for token
        pairs = list(_generated(run))
        out["exact_match"] = float(np.mean([g == w for g, w, _ in pairs])) if pairs else 0.0
        out["examples"] = len(pairs)
    return out


def predict(source, uri: str, out, overrides=(), devices=None, *, max_new_tokens=50) -> int:
    """Writes one JSON line per example of `uri` to `out`, in input order: classifiers
    the label and class probabilities; GPT-2 models the text's sampled continuation.
    Returns the number of lines."""
    run = Loaded(source, uri, overrides, devices)
    task = run.config.task
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if task == "classify":
        lines = _classify(run)
    elif task == "clm":
        lines = _continue(run, uri, max_new_tokens)
    elif task == "seq2seq":
        tok = run.tokenizer
        lines = (
            {"text": tok.decode(g), "target": tok.decode(w), "input": tok.decode(x)}
            for g, w, x in _generated(run)
        )
    else:
        raise ValueError(f"pjx predict handles classify, clm and seq2seq runs, not {task!r}")
    n = 0
    tmp = out.with_name(out.name + ".partial")  # a cut run never leaves a short file
    with open(tmp, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
            n += 1
    tmp.replace(out)
    return n


def _classify(run: Loaded):
    names = run.saved.label_names(run.config.eval_data.source)
    s = run.setup
    for probs in inference.probabilities(s.model, s.task, run.params, run.batches(), s.mesh):
        label = int(np.argmax(probs))
        yield {
            "label": names[label],
            "label_id": label,
            "probabilities": {n: float(p) for n, p in zip(names, probs)},
        }


def _continue(run: Loaded, uri: str, max_new_tokens: int):
    model, params = run.plain()
    sampler = inference.Sampler(model, run.tokenizer, where=run.source)
    texts = [str(t) for t in run.saved.examples(uri).texts]
    rng = jax.random.key(int(run.config.seed))
    for i, text in enumerate(inference.progress(texts, len(texts), "predict")):
        full = sampler(params, text, max_new_tokens, jax.random.fold_in(rng, i))
        yield {"prompt": text, "text": full}


def _generated(run: Loaded):
    """(generated ids, target ids, input ids) per example, in input order: T5 greedy
    decoding up to the target length, cut at the first EOS."""
    model, params = run.plain()
    T = int(run.config.eval_data.get("target_len") or run.config.eval_data.seq_len)
    return inference.greedy_seq2seq(model, params, run.batches(), run.tokenizer, T)
