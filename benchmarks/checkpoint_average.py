r"""Scores averages of a run's last checkpoints: what averaging its parameters over the end
of training (`optimizer.ema_decay`, or tail averaging) would have given, from one run kept
with `--config.checkpoint_every=N --config.keep_checkpoints=K`, e.g. (BENCHMARKS.md):

  python benchmarks/minilm_zero_shot_head.py runs/minilm_zero_shot
  python benchmarks/minilm_sst2.py --dp-steps 180 --dp-batch 1024 --dp-seq-len 32 \
      --pooling mean --only dp_eps8 --set optimizer.lr=2e-3 --set model.dropout_rate=0 \
      --set model.attention_dropout_rate=0 --set init_from=hf:runs/minilm_zero_shot \
      --set checkpoint_every=10 --set keep_checkpoints=20 --workdir runs/zs_ckpts
  python benchmarks/checkpoint_average.py runs/zs_ckpts/dp_eps8 \
      --source "tsv:../shared/data/sst2/train.tsv[90%:]" \
      --source tsv:runs/zs_ckpts/held_out_unseen.tsv --last 1 2 4 8 --decay 0.5 0.8

Prints one JSON line per average and the task's metric on each source, scored with the
run's own config and tokenizer (pjx.evaluation), like `pjx eval`: first the uniform means
of the last k checkpoints (`--last`), then means over all of them weighted decay ** age
(`--decay`; age in checkpoints, 0 for the newest).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from pjx import checkpoint, evaluation
from pjx import train as train_lib
from pjx.checkpoint.saved import Saved


def _weighted_mean(trees, weights):
    w = np.asarray(weights, np.float64) / np.sum(weights)
    mean = lambda *xs: np.tensordot(w, np.stack(xs), axes=1).astype(xs[0].dtype)  # noqa: E731
    return jax.tree.map(mean, *trees)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("--source", action="append", required=True, help="a data URI to score on")
    ap.add_argument("--last", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--decay", type=float, nargs="*", default=[])
    ap.add_argument("--metric", default="accuracy")
    args = ap.parse_args(argv)
    folder = Path(args.workdir) / "checkpoints"
    dirs = checkpoint.complete_step_dirs(folder)
    if not dirs:
        raise SystemExit(f"{folder} holds no complete checkpoint")
    steps = sorted(dirs)
    scorers = {uri: evaluation.Loaded(str(dirs[steps[-1]]), uri) for uri in args.source}
    like = next(iter(scorers.values())).setup.abstract_params
    wanted = steps if args.decay else sorted({s for k in args.last for s in steps[-k:]})
    params = {s: Saved(str(dirs[s])).params(merged=False, like=like) for s in wanted}
    averages = [({"steps": steps[-k:]}, [1.0] * len(steps[-k:]), steps[-k:]) for k in args.last]
    for d in args.decay:
        ages = range(len(steps) - 1, -1, -1)
        averages.append(({"steps": steps, "decay": d}, [d**a for a in ages], steps))
    for out, weights, used in averages:
        mean = _weighted_mean([params[s] for s in used], weights)
        for uri, run in scorers.items():
            on_device = jax.device_put(mean, jax.tree.map(lambda a: a.sharding, like))
            sums = train_lib.metric_sums(run.setup, on_device, run.batches())
            out[uri] = round(float(run.setup.task.finalize(sums)[args.metric]), 4)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
