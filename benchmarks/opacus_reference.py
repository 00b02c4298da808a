"""Opacus (PyTorch) DP-SGD reference for `pjx bench --config.dp.noise_multiplier=...`.

Times train steps of a Hugging Face `BertForSequenceClassification` built from a config in
this script (nothing is downloaded) on the text-classify shapes of
benchmarks/bench_config.py (bert_mini_cls: 4 layers, width 256, 4 heads, MLP 1024,
vocab 8192, 2 classes, batch 32 x 128), and prints one human line and, as its last line,
one JSON object with the fields `pjx bench` prints (tokens_per_s, examples_per_s, step_s,
...) plus what ran (`dp`, `grad_sample_mode`, `opacus`, ...).

  python benchmarks/opacus_reference.py bert_mini_cls --threads 2             # torch, no DP
  python benchmarks/opacus_reference.py bert_mini_cls --threads 2 --dp        # Opacus DP-SGD
  python benchmarks/opacus_reference.py bert_mini_cls --dp --grad-sample-mode functorch

Without `--dp` the step is hf_reference.py's: forward + backward + global-norm clipping
(1.0) + AdamW (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on >= 2-D weights
only). With `--dp` the model, optimizer and data loader go through
`opacus.PrivacyEngine().make_private(...)`: per-example gradients (`--grad-sample-mode`:
"hooks", Opacus' default, per-layer backward hooks; "functorch", per-layer torch.func
vmaps; "ew", torch's ExpandedWeights; "ghost", ghost clipping (Li et al. 2022): per-example
norms from the layers' activations and output gradients, then a second backward of the
loss reweighted by the clip factors, with no per-example gradient stored), each clipped
to `--clip`, summed, Gaussian noise of std clip * `--noise-multiplier` added, divided by
the expected batch size (32), then the same global-norm clipping and AdamW step as pjx's
DP-SGD applies to its privatised gradient (optax's clip_by_global_norm sits in pjx's
optimizer chain with or without DP).

`poisson_sampling=False`: the data loader is left as is, so every step has exactly
`batch` examples, like the synthetic fixed-size batch `pjx bench` times (a real pjx
DP-SGD run draws Poisson batches padded to a fixed, larger shape, see pjx/privacy/__init__.py; the
Opacus accountant's epsilon is therefore not a guarantee for these steps, which does not
matter for timing). The data set is two batches of random ids (all-ones attention mask,
token types 0) and labels, collected from the (DP) data loader before timing and cycled
as hf_reference.py cycles its two batches; the first step (allocations) is timed apart
(`compile_s`), then `--warmup` steps, then the median of `--steps` steps (`step_s`).

Attention: `--attn eager` by default (matmul + softmax, the plain path). Opacus 1.6
computes per-example gradients of the modules holding parameters (here Linear, Embedding,
LayerNorm, all with Opacus grad samplers); attention has none, so `--attn sdpa` works too
(with tiny models and dropout 0, all three modes, eager or sdpa, match a loop of
per-example backward passes to 6e-8) and is there to measure the difference.
`--keep-host-memory` applies pjx's glibc malloc settings (pjx/host_memory.py) as
hf_reference.py does.

Needs `pip install opacus==1.6.0` (a benchmark-only dependency, not in pyproject.toml;
it installs against the torch already there) on top of the `test` extra.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_config import SHAPES, model_fields  # noqa: E402

from pjx.host_memory import keep_large_blocks  # noqa: E402  (jax-free)

CLASSIFY_SHAPES = sorted(k for k, v in SHAPES.items() if v[:2] == ("bert", "classify"))
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew", "ghost")
KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "labels")


def build_model(layers, hidden, heads, mlp, vocab, num_labels, attn, dropout=0.1):
    """HF BERT with its pooler and a `num_labels` classifier, sized as hf_reference.py's."""
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        num_labels=num_labels,
    )
    return tf.BertForSequenceClassification._from_config(cfg, attn_implementation=attn)


def make_examples(torch, n: int, seq: int, vocab: int, num_labels: int, seed: int = 0):
    """`n` random examples as the tensors of KEYS: ids in [5, vocab) (above the special
    ids, as pjx bench draws them), an all-ones mask, token types 0, positions 0..seq-1
    per example (BERT's own [1, L] position buffer would give Opacus a batch of one for
    the position table's per-example gradient), labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, seq), generator=g)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    positions = torch.arange(seq).expand(n, seq).contiguous()
    return ids, torch.ones_like(ids), torch.zeros_like(ids), positions, labels


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(
    shape: str,
    *,
    steps: int,
    warmup: int,
    threads: int,
    dp: bool,
    noise_multiplier: float = 1.0,
    clip: float = 1.0,
    grad_sample_mode: str = "hooks",
    attn: str = "eager",
    dropout: float = 0.1,
    batch: int | None = None,
) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kind, task, *_, seq, default_batch, vocab = SHAPES[shape]
    f = model_fields(shape)
    layers, hidden, heads, mlp = f["num_layers"], f["hidden_size"], f["num_heads"], f["mlp_dim"]
    num_labels = f["num_labels"]
    batch = batch or default_batch
    model = build_model(layers, hidden, heads, mlp, vocab, num_labels, attn, dropout)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    skip = ("position_embeddings", "token_type_embeddings")  # pjx.bench.matmul_params
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    data = torch.utils.data.TensorDataset(*make_examples(torch, 2 * batch, seq, vocab, num_labels))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, drop_last=True)
    expected_batch = batch
    if dp:
        from opacus import PrivacyEngine

        private = PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip,
            poisson_sampling=False,  # every step exactly `batch` examples, as pjx bench
            grad_sample_mode=grad_sample_mode,
            criterion=torch.nn.CrossEntropyLoss(),  # "ghost" wraps it (two backward passes)
        )
        if grad_sample_mode == "ghost":
            model, opt, criterion, loader = private
        else:
            model, opt, loader = private
        expected_batch = opt.expected_batch_size
    batches = [dict(zip(KEYS, b)) for b in loader]
    assert len(batches) == 2 and all(len(b["labels"]) == batch for b in batches)

    def step(b):
        # Mean cross-entropy over the batch (Opacus' loss_reduction="mean"); input_ids
        # positional: the "ew" wrapper takes the batch size from its first argument.
        if dp and grad_sample_mode == "ghost":
            # Ghost clipping needs the per-example losses: the model without labels, then
            # Opacus' criterion, whose backward runs the norm pass and the clipped pass.
            inputs = {k: v for k, v in b.items() if k not in ("input_ids", "labels")}
            out = model(b["input_ids"], **inputs)
            loss = criterion(out.logits, b["labels"])
            loss.backward()
            out.loss = loss
        else:
            out = model(b["input_ids"], **{k: v for k, v in b.items() if k != "input_ids"})
            out.loss.backward()
        if dp:
            # DPOptimizer.step is pre_step (per-example clip, sum, noise, / expected batch)
            # then the AdamW step; the global-norm clip between them is pjx's optimizer's.
            if opt.pre_step():
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.original_optimizer.step()
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    t0 = time.perf_counter()
    step(batches[0])  # first step: allocations (and Opacus' hooks' first call)
    first_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = step(batches[i % len(batches)])
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    fpt = 6.0 * n_matmul + 12.0 * layers * seq * hidden  # pjx.bench.flops_per_token
    return {
        "tokens_per_s": batch * seq / step_s,
        "examples_per_s": batch / step_s,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "compile_s": first_s,
        "params": n_params,
        "matmul_params": n_matmul,
        "flops_per_token": fpt,
        "model_tflops_per_s": batch * seq / step_s * fpt / 1e12,
        "impl": "opacus" if dp else "torch",
        "dp": dp,
        "grad_sample_mode": grad_sample_mode if dp else None,
        "noise_multiplier": noise_multiplier if dp else 0.0,
        "l2_norm_clip": clip if dp else None,
        "expected_batch_size": expected_batch,
        "poisson_sampling": False,
        "shape": shape,
        "device": f"cpu x{threads} threads",
        "backend": "torch-cpu",
        "dtype": "float32",
        "dropout": dropout,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "opacus": _version("opacus"),
        "attn_implementation": attn,
        "model": f"{kind}:{shape}",
        "task": task,
        "num_labels": num_labels,
        "batch_size": batch,
        "seq_len": seq,
        "steps": steps,
        "warmup": warmup,
        "loss": float(loss.detach()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=CLASSIFY_SHAPES)
    p.add_argument("--dp", action="store_true", help="DP-SGD through opacus.PrivacyEngine")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="sigma (with --dp)")
    p.add_argument("--clip", type=float, default=1.0, help="per-example clip norm (with --dp)")
    p.add_argument("--grad-sample-mode", default="hooks", choices=GRAD_SAMPLE_MODES)
    p.add_argument("--attn", default="eager", choices=("eager", "sdpa"))
    p.add_argument("--keep-host-memory", action="store_true", help="pjx's malloc settings")
    p.add_argument("--dropout", type=float, default=0.1, help="all dropout rates")
    p.add_argument("--batch", type=int, default=None, help="batch (default: SHAPES)")
    args = p.parse_args(argv)
    kept = keep_large_blocks() if args.keep_host_memory else False
    r = run(
        args.shape,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        dp=args.dp,
        noise_multiplier=args.noise_multiplier,
        clip=args.clip,
        grad_sample_mode=args.grad_sample_mode,
        attn=args.attn,
        dropout=args.dropout,
        batch=args.batch,
    )
    r["keep_host_memory"] = kept
    what = f"opacus {r['opacus']} DP-SGD ({r['grad_sample_mode']})" if r["dp"] else "torch"
    print(
        f"{what} {r['model']} B={r['batch_size']} L={r['seq_len']} attn={r['attn_implementation']}"
        f": step {r['step_s'] * 1e3:.1f} ms (median of {r['steps']}) | "
        f"{r['tokens_per_s']:,.0f} tokens/s | {r['examples_per_s']:,.1f} sequences/s"
    )
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
