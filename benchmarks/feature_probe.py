r"""What a pretrained BERT encoder knows of each GLUE task before fine-tuning: a linear probe of
its frozen features next to the same probe of a randomly initialised encoder of the same
shape, reading the same tokens.

  pip install scikit-learn     # the probe's logistic regression only
  python benchmarks/feature_probe.py runs/wt2_bert_mini            # --tasks sst2,cola,mrpc,rte

SOURCE is a pjx run (or an `hf:` BERT folder). For each task with a training TSV under
$PJX_DATA (default ../shared/data) it encodes up to --examples rows of the first 90% and
the held-out last 10% (as configs/glue.py splits them) with SOURCE's tokenizer, takes the
mean of the last layer's unpadded token states from each encoder (no training), and fits a
logistic regression (scikit-learn, standardised features) on the training rows. It prints
the task's GLUE metric on the held-out rows per encoder and the majority class's score, then
one JSON object last. On a single-sentence task, pretrained features that score no better
than random ones mean the encoder has not learned what the task needs, and fine-tuning
starts from no advantage. On a pair task (MRPC, RTE) the probe cannot tell: the mean of a
concatenated pair hides the relation its label is about, and even all-MiniLM-L6-v2's
features score like random ones there (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from pjx import data as data_lib
from pjx import metrics, tasks
from pjx.checkpoint.saved import Saved
from pjx.data import sources
from pjx.models import bert

DATA = os.environ.get("PJX_DATA", "../shared/data")
METRIC = {"sst2": "accuracy", "cola": "mcc", "mrpc": "f1", "rte": "accuracy"}


def score(metric: str, labels, predictions) -> float:
    """The GLUE metric of two-class predictions, as pjx's evaluation computes it."""
    confusion = metrics.confusion_matrix(predictions, labels, 2)
    return metrics.classification_report(confusion)[metric]


def encode(task: str, uri: str, tokenizer, seq_len: int, limit: int, seed: int = 0):
    cfg = data_lib.with_defaults(data_lib.default_config())
    cfg.preset, cfg.seq_len = task, seq_len
    ex = sources.read(uri, cfg, need_labels=True, num_labels=2)
    rows = tasks.get("classify").encode(ex, tokenizer, cfg, {}, seed)
    if limit and len(ex) > limit:
        pick = np.sort(np.random.default_rng(seed).permutation(len(ex))[:limit])
        rows = {k: v[pick] for k, v in rows.items()}
    return rows


def mean_state_fn(model):
    """A jitted (params, ids, mask, types) -> mean of the last layer's unpadded states:
    one function for every encoder and batch (the parameters are an argument, not
    constants baked into each compile)."""

    @jax.jit
    def mean_state(params, ids, mask, types):
        out = model.apply({"params": params}, ids, mask, types)
        return bert.mean_pool(out["last_hidden_state"], mask)

    return mean_state


def features(mean_state, params, batch, chunk: int = 256) -> np.ndarray:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    parts = [
        mean_state(params, *(jnp.asarray(batch[k][i : i + chunk]) for k in keys))
        for i in range(0, len(batch["label"]), chunk)
    ]
    return np.concatenate([np.asarray(p) for p in parts])


def probe(train_x, train_y, test_x, test_y, metric: str) -> float:
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=3000).fit((train_x - mu) / sd, train_y)
    return score(metric, test_y, clf.predict((test_x - mu) / sd))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a pjx run or hf:DIR (a BERT encoder)")
    p.add_argument("--tasks", default="sst2,cola,mrpc,rte")
    p.add_argument("--examples", type=int, default=4000, help="training rows probed (at most)")
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()

    saved = Saved(args.source)
    model, tok = saved.model, saved.tokenizer
    trained = saved.params()
    dummy = jnp.ones((1, 8), jnp.int32)
    random = model.init(jax.random.PRNGKey(0), dummy, dummy, jnp.zeros_like(dummy))["params"]
    mean_state = mean_state_fn(model)
    results = {}
    for task in args.tasks.split(","):
        path = f"{DATA}/{task}/train.tsv"
        if not os.path.exists(path):
            print(f"{task}: no {path}, skipped")
            continue
        train = encode(task, f"tsv:{path}[:90%]", tok, args.seq_len, args.examples)
        test = encode(task, f"tsv:{path}[90%:]", tok, args.seq_len, 0)
        metric = METRIC[task]
        majority = np.full_like(test["label"], np.bincount(train["label"]).argmax())
        row = {"metric": metric, "rows": [len(train["label"]), len(test["label"])]}
        row["majority"] = round(score(metric, test["label"], majority), 4)
        for name, params in (("pretrained", trained), ("random", random)):
            fx = [features(mean_state, params, b) for b in (train, test)]
            row[name] = round(probe(fx[0], train["label"], fx[1], test["label"], metric), 4)
        results[task] = row
        print(
            f"{task} ({metric}, {row['rows'][0]} / {row['rows'][1]} rows): pretrained "
            f"{row['pretrained']:.3f}, random {row['random']:.3f}, majority {row['majority']:.3f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
