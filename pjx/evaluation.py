"""Score a trained model on any data source, and write its predictions, without training.

    pjx eval runs/sst2 --source tsv:dev.tsv                  # metrics; last line JSON
    pjx predict runs/sst2 --source tsv:test.tsv --out preds.jsonl

    from pjx import evaluation
    evaluation.evaluate("runs/sst2", "tsv:dev.tsv")["accuracy"]

A pjx run (workdir or checkpoint) brings its resolved config, tokenizer and (LoRA)
parameters (pjx.checkpoint.saved); the data source is read with the run's data settings (columns,
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

from pjx import inference, tasks
from pjx import plan as plan_lib
from pjx import run as run_lib
from pjx import train as train_lib
from pjx import workdir as workdir_lib
from pjx.checkpoint.saved import Saved
from pjx.data import overlap

log = logging.getLogger(__name__)


def _with_teacher(s: train_lib.Scorer, config, source: str) -> train_lib.Scorer:
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
    as the eval split, tokenizer, train.Scorer (no optimizer) and sharded params; and what a task's
    `report` / `predictions` run the model with (`label_names`, `probabilities`,
    `continuations`, `generated`)."""

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
        plan = plan_lib.from_config(c)
        self.setup = train_lib.scorer(plan, tokenizer=self.tokenizer, devices=devices)
        if self.setup.frozen_models:  # distill: the loss compares with its teacher
            self.setup = _with_teacher(self.setup, c, str(source))
        like = self.setup.abstract_params
        params = self.saved.params(merged=False, like=like)
        self.params = jax.device_put(params, jax.tree.map(lambda a: a.sharding, like))
        self._data = None

    def batches(self):
        """The source's examples in input order (the last batch padded with weight 0),
        encoded once into a cache that lives as long as this object (re-iterable)."""
        if self._data is None:
            self._cache = tempfile.TemporaryDirectory(prefix="pjx_eval_")
            self._data = workdir_lib.build_data(
                self.setup.plan, self.tokenizer, train=False, workdir=self._cache.name,
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

    # What a task's `report` / `predictions` (pjx.tasks.base) run the model with.
    def label_names(self) -> list[str]:
        return self.saved.label_names(self.config.eval_data.source)

    def probabilities(self):
        """Class probabilities [C] per example, in input order."""
        s = self.setup
        return inference.probabilities(s.model, s.task, self.params, self.batches(), s.mesh)

    def continuations(self, max_new_tokens: int):
        """(text, text + sampled continuation) per text of the source, in input order (a
        decoder: pjx.inference.Sampler)."""
        model, params = self.plain()
        sampler = inference.Sampler(model, self.tokenizer, where=self.source)
        texts = [str(t) for t in self.saved.examples(self.config.eval_data.source).texts]
        rng = jax.random.key(int(self.config.seed))
        for i, text in enumerate(inference.progress(texts, len(texts), "predict")):
            yield text, sampler(params, text, max_new_tokens, jax.random.fold_in(rng, i))

    def generated(self):
        """(generated ids, target ids, input ids) per example, in input order: T5 greedy
        decoding up to the target length, cut at the first EOS."""
        model, params = self.plain()
        T = int(self.config.eval_data.get("target_len") or self.config.eval_data.seq_len)
        return inference.greedy_seq2seq(model, params, self.batches(), self.tokenizer, T)


def evaluate(source, uri: str, overrides=(), devices=None) -> dict:
    """The task's metrics of `source` on data source `uri` and what its `Task.report` adds
    (classification the confusion matrix, rows = true labels; seq2seq exact match), with
    `examples` or `tokens`: how many were scored."""
    run = Loaded(source, uri, overrides, devices)
    task = run.setup.task
    sums = train_lib.metric_sums(run.setup, run.params, run.batches())
    if sums is None:
        raise ValueError(f"{uri} holds no example to evaluate")
    return {"source": uri, "task": run.config.task, **task.finalize(sums), **task.report(sums, run)}


def predict(source, uri: str, out, overrides=(), devices=None, *, max_new_tokens=50) -> int:
    """Writes one JSON line per example of `uri` to `out`, in input order (`Task.predictions`:
    classifiers the label and class probabilities; language models the text's sampled
    continuation; seq2seq the greedy generation). Returns the number of lines."""
    run = Loaded(source, uri, overrides, devices)
    lines = run.setup.task.predictions(run, max_new_tokens=max_new_tokens)
    if lines is None:
        default = tasks.Task.predictions  # the tasks that override it write lines
        able = sorted(n for n, t in tasks.TASKS.items() if type(t).predictions is not default)
        raise ValueError(
            f"pjx predict handles {', '.join(able[:-1])} and {able[-1]} runs, "
            f"not {run.config.task!r}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = out.with_name(out.name + ".partial")  # a cut run never leaves a short file
    with open(tmp, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
            n += 1
    tmp.replace(out)
    return n
