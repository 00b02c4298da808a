"""Hugging Face transformers (PyTorch, eager) reference for `pjx bench`.

Times train steps (forward + backward + global-norm clipping + AdamW) of
`BertForMaskedLM` / `GPT2LMHeadModel` / `LlamaForCausalLM` / `ViTForImageClassification`
built from configs in this script (nothing is downloaded), on the shapes of
benchmarks/bench_config.py, and prints, as its last line, one JSON object with the fields
`pjx bench` prints.

  python benchmarks/hf_reference.py bert_mini --threads 2
  python benchmarks/hf_reference.py gpt2_small --device cuda --bf16 --compile --dropout 0
  python benchmarks/hf_reference.py vit_b16 --steps 1 --tiny      # CPU smoke check

`--compile` compiles the model (forward, and its backward through AOTAutograd); on CUDA
AdamW is the fused kernel (`fused=True`), so the optimizer costs a few launches without
a compile of its own. ViT gets random pixels [B,3,224,224] and labels (cross-entropy via
`labels=`); its tokens/s count 197 tokens per image (196 patches + [CLS]), as pjx does.
On CUDA `peak_bytes` is torch's peak allocated memory and `flops_per_token` the same
6N + 12 * layers * seq * hidden as pjx.bench (N without the position / token-type tables).

MLM batches are masked once on the host like `DataCollatorForLanguageModeling` (15%,
80/10/10) and the model computes logits at every position with labels -100 elsewhere,
which is how HF trains BERT. `--keep-host-memory` applies the glibc malloc settings that
pjx applies to itself on CPU (pjx/host_memory.py), for a comparison with the same allocator.
Needs the `test` extra (torch, transformers); pjx never imports this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_config import OPTIMIZER, PATCH, SHAPES, model_fields, tokens_per_example  # noqa: E402

from pjx.host_memory import keep_large_blocks  # noqa: E402  (jax-free)


def build_model(kind, layers, hidden, heads, vocab, attn, dropout=0.1, mlp=None, image=224):
    """`vocab` is the number of classes for ViT, `image` its image side."""
    import transformers as tf

    mlp = mlp or 4 * hidden
    if kind == "llama":  # bench_config.model_fields: GQA with half the heads, tied, no dropout
        cfg = tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        )
        return tf.LlamaForCausalLM._from_config(cfg, attn_implementation=attn)
    if kind == "vit":
        cfg = tf.ViTConfig(
            image_size=image,
            patch_size=PATCH,
            num_channels=3,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            num_labels=vocab,
        )
        return tf.ViTForImageClassification._from_config(cfg, attn_implementation=attn)
    if kind == "bert":
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
        )
        return tf.BertForMaskedLM._from_config(cfg, attn_implementation=attn)
    cfg = tf.GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_inner=mlp,
        n_positions=1024,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        activation_function="gelu_new",
    )
    return tf.GPT2LMHeadModel._from_config(cfg, attn_implementation=attn)


def make_batch(torch, kind: str, batch: int, seq: int, vocab: int, seed: int):
    """Random ids (or, for ViT, pixels [B,3,seq,seq] and `vocab` classes) and labels."""
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {
            "pixel_values": torch.randn((batch, 3, seq, seq), generator=g),
            "labels": torch.randint(0, vocab, (batch,), generator=g),
        }
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if kind in ("gpt2", "llama"):
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}
    # DataCollatorForLanguageModeling: 15% of tokens, 80% [MASK], 10% random, 10% kept.
    labels = ids.clone()
    chosen = torch.rand(ids.shape, generator=g) < 0.15
    labels[~chosen] = -100
    u = torch.rand(ids.shape, generator=g)
    inputs = ids.clone()
    inputs[chosen & (u < 0.8)] = 4  # [MASK]
    rand = torch.randint(5, vocab, ids.shape, generator=g)
    swap = chosen & (u >= 0.9)
    inputs[swap] = rand[swap]
    return {
        "input_ids": inputs,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


def run(
    shape: str,
    *,
    steps: int,
    warmup: int,
    threads: int,
    attn: str,
    compile_: bool,
    device: str = "cpu",
    bf16: bool = False,
    dropout: float = 0.1,
    batch: int | None = None,
    tiny: bool = False,
) -> dict:
    import contextlib

    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if cuda:  # fp32 matmuls (outside autocast) on TF32 tensor cores, as XLA's default
        torch.set_float32_matmul_precision("high")
    kind, task, *_, seq, default_batch, vocab = SHAPES[shape]
    f = model_fields(shape, tiny=tiny)
    layers, hidden, heads, mlp = f["num_layers"], f["hidden_size"], f["num_heads"], f["mlp_dim"]
    batch = batch or (min(default_batch, 2) if tiny else default_batch)
    model = build_model(kind, layers, hidden, heads, vocab, attn, dropout, mlp, image=seq)
    model = model.to(device)
    model.train()
    # AdamW as pjx's runs of these shapes: bench_config.OPTIMIZER's lr and weight decay,
    # betas (0.9, 0.999), eps 1e-8, decay on kernels only (HF Trainer's no-decay groups:
    # biases and LayerNorm weights).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": OPTIMIZER["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=OPTIMIZER["lr"],
        betas=(0.9, 0.999),
        eps=1e-8,
        **({"fused": True} if cuda else {}),
    )
    batches = [
        {k: v.to(device) for k, v in make_batch(torch, kind, batch, seq, vocab, seed=i).items()}
        for i in range(2)
    ]
    # bf16: autocast matmuls (parameters and AdamW stay float32), as pjx's dtype=bfloat16.
    autocast = (
        (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    forward = torch.compile(model) if compile_ else model

    def step(b):
        with autocast():
            out = forward(**b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step(batches[0])  # first step: allocations (and compilation with --compile)
    sync()
    first_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = step(batches[i % len(batches)])
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = tokens_per_example(shape)  # ViT: patches + [CLS]
    # pjx.bench.matmul_params: all but the looked-up position / token-type tables.
    skip = ("position_embeddings", "wpe.", "token_type_embeddings")
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))
    fpt = 6.0 * n_matmul + 12.0 * layers * tokens * hidden
    out = {
        "tokens_per_s": batch * tokens / step_s,
        "examples_per_s": batch / step_s,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "compile_s": first_s,
        "params": n_params,
        "matmul_params": n_matmul,
        "flops_per_token": fpt,
        "model_tflops_per_s": batch * tokens / step_s * fpt / 1e12,
        "impl": "hf",
        "shape": shape,
        "tiny": tiny,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu x{threads} threads",
        "backend": f"torch-{device}",
        "dtype": "bfloat16 autocast" if bf16 else "float32",
        "dropout": dropout,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": attn,
        "torch_compile": compile_,
        "model": f"{kind}:{shape}",
        "task": task,
        "batch_size": batch,
        "seq_len": tokens,
        "steps": steps,
        "warmup": warmup,
        "loss": float(loss.detach()),
    }
    if kind == "vit":
        out["image_size"] = seq
    if cuda:
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--compile", action="store_true", help="torch.compile the train step")
    p.add_argument("--keep-host-memory", action="store_true", help="pjx's malloc settings")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--dropout", type=float, default=0.1, help="all dropout rates")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: SHAPES)")
    p.add_argument("--tiny", action="store_true", help="2 layers, width 128: a smoke check")
    args = p.parse_args(argv)
    kept = keep_large_blocks() if args.keep_host_memory else False
    r = run(
        args.shape,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        attn=args.attn,
        compile_=args.compile,
        device=args.device,
        bf16=args.bf16,
        dropout=args.dropout,
        batch=args.batch,
        tiny=args.tiny,
    )
    r["keep_host_memory"] = kept
    print(
        f"hf {r['model']} B={r['batch_size']} L={r['seq_len']}: step "
        f"{r['step_s'] * 1e3:.1f} ms (median of {r['steps']}) | {r['tokens_per_s']:,.0f} tokens/s"
        f" | {r['examples_per_s']:,.1f} {'images' if 'image_size' in r else 'sequences'}/s"
    )
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
