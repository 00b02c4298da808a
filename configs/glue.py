"""Fine-tuning a BERT on a GLUE task (Wang et al. 2019): SST-2, CoLA, MRPC or RTE.

    pjx train --config configs/glue.py:sst2 --workdir runs/sst2 --config.init_from=runs/bert_mlm
    pjx train --config configs/glue.py:rte --workdir runs/rte --config.init_from=hf:/path/bert
    pjx train --config configs/glue.py:cola,smoke --workdir /tmp/glue_smoke
    pjx train --config configs/glue.py:sst2,dp --workdir runs/dp --config.init_from=hf:/path/bert
    pjx train --config configs/glue.py:sst2,dp,lora --workdir runs/dp_lora \
        --config.init_from=hf:/path/bert

ARG: the task (`sst2`, `cola`, `mrpc`, `rte`), optionally `,smoke` (2 steps), `,dp`
(differentially private fine-tuning at epsilon 8, see below) and `,lora` (LoRA r=8 on the
attention's query / value projections, the classifier trained fully;
`--config.lora.targets=all-linear` adapts every linear layer of the blocks, closer to full
fine-tuning: BENCHMARKS.md). With
`init_from` (a pjx pretraining workdir, or `hf:` a Hugging Face BERT folder) the encoder,
its architecture and its tokenizer come from there and the classifier is new; without it a
`mini` BERT trains from scratch with a SentencePiece vocabulary trained on the task text.
Data: the GLUE training TSV under $PJX_DATA/<task>/train.tsv (PJX_DATA defaults to
../shared/data) with its last 10% held out for evaluation (the official dev sets are not
local), or TFDS: --config.data.source=tfds:glue/sst2:train
--config.eval_data.source=tfds:glue/sst2:validation. Hyper-parameters follow BERT's
fine-tuning recipe: AdamW 3e-5 (1e-4 for the small RTE / MRPC), batch 32, about 3 epochs,
10% linear warm-up then linear decay.

`dp`: DP-SGD at epsilon 8 (delta 1/(10 N)) with what private fine-tuning needs (Li et al.
2022, "Large Language Models Can Be Strong Differentially Private Learners"): large
Poisson batches (1,024 expected, in 8 accumulated micro-batches), a small clip norm (0.1),
a higher learning rate (5e-4; 1e-2 for the new classifier, `optimizer.head_lr`: a clipped
example moves it by at most the clip norm), about 3 epochs, no weight decay; the noise
multiplier is calibrated to the target epsilon before the first step. Check the budget
without training: `pjx privacy --config configs/glue.py:sst2,dp`. Without `init_from` the
text is read as bytes (a public vocabulary: one trained on the private text is refused);
with it, the pretrained model's own tokenizer. For a sentence-embedding checkpoint such as
all-MiniLM-L6-v2, add `--config.model.pooling=mean` (its [CLS] pooler was never trained
and barely varies between sentences). `dp,lora`
privatises only the adapters and the classifier (Yu et al. 2022, "Differentially Private
Fine-tuning of Language Models"), at a 2x higher learning rate (1e-3): the noise lands on
those coordinates alone, a small share of the model's, and only they take per-example
gradients. Measured accuracies, parameter counts and step costs: BENCHMARKS.md.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
# task -> (steps: ~3 epochs of the 90% train slice at batch 32, lr, metric to keep the best by)
TASKS = {
    "sst2": (5_000, 3e-5, "accuracy"),
    "cola": (800, 3e-5, "mcc"),  # GLUE scores CoLA by Matthews correlation
    "mrpc": (350, 1e-4, "f1"),
    "rte": (250, 1e-4, "accuracy"),
}


def get_config(arg: str = "sst2"):
    name, *rest = arg.split(",")
    if name not in TASKS:
        raise ValueError(f"glue.py:{arg}: pick a task from {sorted(TASKS)}, e.g. glue.py:sst2")
    steps, lr, metric = TASKS[name]
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = "bert", "mini", "classify"
    c.model.num_labels = 2
    tsv = f"tsv:{DATA}/{name}/train.tsv"
    c.data.source, c.eval_data.source = tsv + "[:90%]", tsv + "[90%:]"
    c.data.preset, c.data.seq_len = name, 128
    # Used only without init_from (a pretrained model brings its own tokenizer).
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=unigram"
    c.batch_size, c.eval_batch_size, c.steps = 32, 128, steps
    # Derived from `steps` by reference, so they follow --config.steps (pjx.config).
    ref = c.get_ref("steps")
    c.optimizer.update(dict(lr=lr, warmup_steps=ref // 10, schedule="linear", weight_decay=0.01))
    c.log_every, c.eval_every, c.checkpoint_every = 50, ref // 5, ref // 5
    c.best_metric = metric
    if "dp" in rest:
        c.batch_size, c.steps = 1024, 180  # ~3 epochs of SST-2's 60k training sentences
        # The new classifier at 20x the encoder's lr: under a clip of 0.1 each example moves
        # it by at most the clip, so its lr sets how far it gets in 180 steps (BENCHMARKS.md,
        # "DP-SGD").
        c.optimizer.update(dict(lr=5e-4, head_lr=1e-2, weight_decay=0.0, accum_steps=8))
        c.dp.update(dict(target_epsilon=8.0, l2_norm_clip=0.1, microbatch_size=32))
        c.data.seq_len = 64  # SST-2 sentences are short; per-example gradients cost per token
        # Without init_from, bytes: a vocabulary trained on the private text would leak which
        # words occur in it, outside epsilon (pjx.privacy.check_run). With init_from the
        # pretrained model's own tokenizer wins (pjx.workdir.build_tokenizer).
        c.data.tokenizer = "byte?specials=bert"
    if "lora" in rest:
        c.lora.update(dict(rank=8, alpha=16.0))
        c.optimizer.lr = 1e-3 if "dp" in rest else 5e-4
    if "smoke" in rest:
        config_lib.make_smoke(c, source="")
        c.data.source, c.eval_data.source = tsv + "[:64]", tsv + "[64:80]"
    return c
