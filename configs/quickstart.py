"""Pretrain, then fine-tune, on the built-in corpus, next to the same fine-tuning from
scratch: what pretraining buys, in a few minutes on a laptop CPU.

    pjx train --config configs/quickstart.py --workdir runs/quickstart

Stage `pretrain` (WORKDIR/pretrain): a tiny BERT (2 layers, width 128) learns masked-LM
on the Python documentation that ships with every Python (`embedded`, unlabelled), with a
SentencePiece vocabulary trained on it. Stage `finetune` (WORKDIR/finetune) starts from
that checkpoint (`init_from`: encoder, architecture and tokenizer come from it; the
classifier is new) and learns `embedded:classify` from 300 labelled sentences: is a sentence
from the syntax pages or the data-model / built-in-types pages? Stage `scratch`
(WORKDIR/scratch) is the same fine-tuning without pretraining: a fresh model with a
SentencePiece vocabulary trained on those labelled sentences, everything else equal. Both
evaluate on the same 1,758 sentences (Python 3.11), every labelled one not fine-tuned on (eval
lines in WORKDIR/STAGE/metrics.jsonl: accuracy, precision, recall, F1, MCC; chance 50%),
and the last line printed states both accuracies and the gap (`config.compare`). The line
before it names WORKDIR/curves.png, the run in one figure (pjx.plot.write_stages): both
fine-tunings on shared axes (eval accuracy; eval and train loss) beside the pretraining's
MLM loss. The unlabelled corpus holds the held-out sentences too, without their labels, as
unlabelled in-domain text does.

Why these settings (measured on 2 CPU cores, BENCHMARKS.md): MLM at BERT's 15% masking,
lr 1e-3 and dropout 0.1 left the encoder near the unigram stage after 800 steps (masked
accuracy 14%; a linear probe on its frozen features scored as on a random encoder's), so
fine-tuning from it was no better than from scratch, with 1,646 labels or with 300. A 30%
mask rate (more targets per step), lr 2e-3, no dropout and 2,000 steps reach 35% (1,200:
28%; with 2,000 the command takes 3 min 10 s on 2 idle cores), and pretraining pays where
labels are few: a vocabulary and word meanings learned from unlabelled text cover words
the labelled sentences never show. Both fine-tunings run at lr 5e-4 (2e-4 left the
pretrained run short of its best), with label smoothing 0.1, and classify the mean token
state (`model.pooling`): MLM trains every token's state but never [CLS] or the pooler as a
sentence summary. The gap moves by a few points from one seed to the next; measured on the
412 sentences of `[80%:]` alone (the earlier held-out set) it moved about as much again
from sampling noise (BENCHMARKS.md). Running the command again resumes (or finds every
stage complete). ARG `smoke`: 2 steps per stage.
"""

from pjx import config as config_lib

LABELLED = 300  # labelled sentences to fine-tune on (of 1,646 in embedded:classify[:80%])


def get_config(arg: str = ""):
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = "bert", "tiny", "mlm"
    c.model.max_position_embeddings = 128
    c.data.source, c.eval_data.source = "embedded[:95%]", "embedded[95%:]"
    c.data.seq_len = 64
    c.data.tokenizer = "train:sentencepiece?vocab_size=2000&model_type=unigram"
    # No dropout: a tiny model on a short budget underfits, in pretraining and fine-tuning.
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.batch_size, c.eval_batch_size, c.steps = 32, 64, 2000
    # Derived from `steps` by reference: each stage's `steps` moves them (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=2e-3, warmup_steps=steps // 10, schedule="linear", weight_decay=0.01)
    )
    c.log_every, c.eval_every, c.checkpoint_every = 50, steps // 2, steps // 2
    smoke = "smoke" in arg.split(",")
    # The same fine-tuning twice: from the pretrained checkpoint, and from scratch.
    finetune = {
        "task": "classify",
        "task_args.label_smoothing": 0.1,  # 300 sentences are fit exactly: keep logits finite
        "model.num_labels": 2,
        "data.source": f"embedded:classify[:{LABELLED}]",
        # Every sentence not fine-tuned on (1,758 with Python 3.11), not only the 412 of
        # [80%:]: a quarter of the sampling variance.
        "eval_data.source": f"embedded:classify[{LABELLED}:]",
        "steps": 2 if smoke else 300,
        # MLM trains every token's state, not [CLS] as a summary (no NSP): pool the mean.
        "model.pooling": "mean",
        "optimizer.lr": 5e-4,
        "eval_every": 100,
        "checkpoint_every": 100,
        "best_metric": "accuracy",
    }
    pretrain = {"task_args.mask_rate": 0.3}  # twice BERT's 15%: more targets per step
    c.stages = (
        ("pretrain", {**pretrain, "steps": 2} if smoke else pretrain),
        ("finetune", {**finetune, "init_from": "stage:pretrain"}),
        # No init_from: a fresh model, its vocabulary (data.tokenizer) trained on data.source.
        ("scratch", finetune),
    )
    c.compare.stages = (("from pretraining", "finetune"), ("from scratch", "scratch"))
    return c
