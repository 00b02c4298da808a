"""Benchmark shapes shared by `pjx bench` and the Hugging Face reference (hf_reference.py).

  pjx bench --config benchmarks/bench_config.py:bert_mini
  pjx bench --config benchmarks/bench_config.py:gpt2_small --config.model.dtype=bfloat16

ARG picks a row of SHAPES; the HF script builds the same sizes from the same table.
"""

# name -> (model, task, layers, hidden, heads, seq_len, batch, vocab)
SHAPES = {
    # CPU comparison (BENCHMARKS.md): BERT mini MLM and a GPT-2 of the same width.
    "bert_mini": ("bert", "mlm", 4, 256, 4, 128, 32, 8192),
    "gpt2_mini": ("gpt2", "clm", 4, 256, 4, 256, 16, 8192),
    # GPU targets (issue 3): GPT-2 small (124M) at seq 1024, BERT-base MLM at seq 128.
    "gpt2_small": ("gpt2", "clm", 12, 768, 12, 1024, 32, 50257),
    "bert_base": ("bert", "mlm", 12, 768, 12, 128, 256, 30522),
}


def get_config(arg="bert_mini"):
    from pjx import config as config_lib  # here, so hf_reference.py imports no jax

    if arg not in SHAPES:
        raise ValueError(f"unknown benchmark shape {arg!r}; choose from {sorted(SHAPES)}")
    model, task, layers, hidden, heads, seq, batch, vocab = SHAPES[arg]
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = model, "tiny", task
    c.model.update(
        dict(
            num_layers=layers,
            hidden_size=hidden,
            num_heads=heads,
            mlp_dim=4 * hidden,
            vocab_size=vocab,
        )
    )
    c.data.seq_len = seq
    c.batch_size = batch
    c.steps = 1000
    c.optimizer.update(dict(lr=1e-4, warmup_steps=10, weight_decay=0.01, clip_norm=1.0))
    if task == "mlm":  # [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, as pjx's BERT tokenizers
        c.task_args.mask_id = 4
        c.task_args.pad_id = 0
        c.task_args.special_ids = (0, 1, 2, 3)
    c.progress = False
    return c
