"""Score a trained model on any data source, and write its predictions, without training.

    pjx eval runs/sst2 --source tsv:dev.tsv                  # metrics; last line JSON
    pjx predict runs/sst2 --source tsv:test.tsv --out preds.jsonl

    from pjx import evaluation
    evaluation.evaluate("runs/sst2", "tsv:dev.tsv")["accuracy"]

A pjx run (workdir or checkpoint) brings its resolved config, tokenizer and (LoRA)
parameters; the data source is read with the run's data settings (columns, preset,
sequence length) as its eval split: every example once, in input order. A Hugging Face
folder (`hf:DIR`) works where it has the task's head (a sequence classifier, an LM head).
`overrides` (`key=value`, as `--config.key=value`) change the loaded config, e.g. the eval
batch size or, for a Hugging Face folder, `data.preset`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pjx import checkpoint, distributed, hf, inference, init_from, lora, sharding, tasks, tokenizers
from pjx import config as config_lib
from pjx import data as data_lib
from pjx import run as run_lib
from pjx import train as train_lib
from pjx.data import sources
from pjx.data import uri as uri_lib
from pjx.models import t5

log = logging.getLogger(__name__)

# Hugging Face architectures -> the pjx task their head serves.
HF_TASKS = {
    "ForSequenceClassification": "classify",
    "ForImageClassification": "classify",
    "LMHeadModel": "clm",
    "ForCausalLM": "clm",
    "ForConditionalGeneration": "seq2seq",
}


def _hf_config(path: str) -> ml_collections.ConfigDict:
    raw = json.loads((Path(path) / "config.json").read_text())
    arch = " ".join(raw.get("architectures") or [])
    task = next((t for suffix, t in HF_TASKS.items() if suffix in arch), None)
    if task is None:
        raise ValueError(
            f"hf:{path}: architectures {raw.get('architectures')} have no head pjx can score "
            f"(one of *{', *'.join(HF_TASKS)}); fine-tune it with pjx train first"
        )
    family, fields = hf.model_config(path)
    c = config_lib.base_config()
    c.model.name, c.task, c.init_from = family, task, f"hf:{path}"
    if task == "classify":
        c.model.num_labels = int(fields.get("num_labels") or len(raw.get("id2label") or {}))
        labels = [raw["id2label"][k] for k in sorted(raw.get("id2label", {}), key=int)]
        if labels and not all(n.startswith("LABEL_") for n in labels):
            c.data.labels = labels
    return c


def run_config(source, overrides=()) -> ml_collections.ConfigDict:
    """The config `source` was trained with (a Hugging Face folder: one built from it),
    with `overrides` applied."""
    source = str(hf.folder.local_source(source))  # a Hub id: its local snapshot
    if source.startswith("hf:"):
        c = _hf_config(source[3:])
    else:
        saved = checkpoint.read_checkpoint_config(source)
        if not saved:
            raise FileNotFoundError(f"{source}: its checkpoint holds no run config")
        c = ml_collections.ConfigDict(saved)
    c = config_lib.apply_overrides(c, overrides)
    c.dp.noise_multiplier, c.dp.target_epsilon = 0.0, 0.0  # scoring adds no noise
    return c


class Loaded:
    """A run ready to score: resolved config, tokenizer, train.Setup, sharded params."""

    def __init__(self, source, uri: str, overrides=(), devices=None):
        source = str(hf.folder.local_source(source))
        c = run_config(source, overrides)
        folder = checkpoint.tokenizer_dir(source)
        tokenizer = tokenizers.load(str(folder)) if folder is not None else None
        c.eval_data.source = uri  # read with the run's eval settings (preset, columns, ...)
        if c.dp.get("planned_epsilon") and uri_lib.same_data(uri, c.data.source):
            log.warning(
                f"{source} was trained with DP-SGD on {c.data.source}: metrics on {uri} come "
                "from that private data without noise and are not covered by its epsilon"
            )
        if not source.startswith("hf:"):
            c.init_from = ""  # the parameters come from `source` itself
        self.config = config_lib.resolve(c, tokenizer)
        self.tokenizer, self.source = tokenizer, source
        mesh = sharding.make_mesh(self.config.mesh, devices)
        self.setup = train_lib.build(self.config, tokenizer=tokenizer, mesh=mesh)
        abstract = self.setup.abstract_state.params
        zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
        params, report = init_from.init_from(source, zeros, verbose=False)
        if report.new:
            missing = ", ".join(p for p, _ in report.new[:4])
            raise ValueError(
                f"{source} lacks parameters the {self.config.task} model needs ({missing}, "
                f"...): does it have the task's head?"
            )
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
        if lora.enabled(self.config.lora):
            model, params = model.model, lora.merge(params, self.config.lora.to_dict())
        return model, params


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
        out["labels"] = label_names(run.config, uri)
        out["examples"] = int(confusion.sum())
    elif "count" in sums:
        out["tokens" if run.config.task != "classify" else "examples"] = int(sums["count"])
    if run.config.task == "seq2seq":  # greedy generation, compared token for token
        pairs = list(_generated(run))
        out["exact_match"] = float(np.mean([g == w for g, w, _ in pairs])) if pairs else 0.0
        out["examples"] = len(pairs)
    return out


def label_names(config, uri: str | None = None) -> list[str]:
    """The class names: the run's `data.labels`, else those the source `uri` names
    (a TFDS ClassLabel, the built-in corpus), else "0", "1", ..."""
    C = int(config.model.get("num_labels") or 0)
    names = list(config.data.get("labels") or [])
    if len(names) != C and uri:
        data_cfg = data_lib.with_defaults({**config.data.to_dict(), "source": uri})
        ex = sources.read(uri, data_cfg, need_labels=True, num_labels=C)
        names = list(ex.label_names or [])
    return names if len(names) == C else [str(i) for i in range(C)]


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


def _progress(iterable, total: int, what: str):
    """Yields `iterable`, logging progress every ~10% on long inputs."""
    every = max(total // 10, 1)
    for i, x in enumerate(iterable, 1):
        yield x
        if total >= 1000 and (i % every == 0 or i == total):
            log.info(f"{what}: {i}/{total}")


def _classify(run: Loaded):
    s, task = run.setup, tasks.get("classify")
    names = label_names(run.config, run.config.eval_data.source)
    probs_fn = jax.jit(
        lambda p, b: jax.nn.softmax(task.logits(s.model, p, b).astype(jnp.float32), -1)
    )
    data = run.batches()
    with sharding.context(s.mesh):
        for batch in _progress(data, len(data), "predict (batches)"):
            b = dict(batch)
            weight = np.asarray(b.get("weight", np.ones(len(next(iter(b.values()))))))
            G = getattr(data, "global_batch_size", len(weight) * jax.process_count())
            b = sharding.global_batch(b, sharding.batch_sharding(s.mesh, G))
            probs = np.asarray(distributed.host_value(probs_fn(run.params, b)))
            for i in np.flatnonzero(weight > 0):
                label = int(np.argmax(probs[i]))
                yield {
                    "label": names[label],
                    "label_id": label,
                    "probabilities": {n: float(p) for n, p in zip(names, probs[i])},
                }


def _continue(run: Loaded, uri: str, max_new_tokens: int):
    model, params = run.plain()
    sampler = inference.Sampler(model, run.tokenizer, where=run.source)
    data_cfg = data_lib.with_defaults({**run.config.data.to_dict(), "source": uri})
    ex = sources.read(uri, data_cfg, need_labels=False, num_labels=0)
    rng = jax.random.key(int(run.config.seed))
    texts = [str(t) for t in ex.texts]
    for i, text in enumerate(_progress(texts, len(texts), "predict")):
        full = sampler(params, text, max_new_tokens, jax.random.fold_in(rng, i))
        yield {"prompt": text, "text": full}


def _until_eos(ids, eos: int, pad: int) -> list[int]:
    out = []
    for i in np.asarray(ids).tolist():
        if i == eos:
            break
        if i != pad:
            out.append(i)
    return out


def _generated(run: Loaded):
    """(generated ids, target ids, input ids) per example, in input order: T5 greedy
    decoding up to the target length, cut at the first EOS."""
    model, params = run.plain()
    tok = run.tokenizer
    eos, pad = int(tok.eos_id), int(tok.pad_id or 0)
    data = run.batches()
    T = int(run.config.eval_data.get("target_len") or run.config.eval_data.seq_len)
    gen = jax.jit(lambda p, x, m: t5.generate(model, p, x, m, max_new_tokens=T), donate_argnums=())
    for batch in _progress(data, len(data), "generate (batches)"):
        b = dict(batch)
        weight = np.asarray(b.get("weight", np.ones(len(b["input_ids"]))))
        out = np.asarray(gen(params, b["input_ids"], b["attention_mask"]))
        for i in np.flatnonzero(weight > 0):
            yield (
                _until_eos(out[i], eos, pad),
                _until_eos(b["labels"][i], eos, pad),
                _until_eos(b["input_ids"][i], eos, pad),
            )
