"""The two-stage flow on the built-in corpus, in a few minutes on a laptop CPU.

    pjx train --config configs/quickstart.py --workdir runs/quickstart

Stage `pretrain` (WORKDIR/pretrain): a tiny BERT (2 layers, width 128) learns masked-LM
on the Python documentation that ships with every Python (`embedded`), with a
SentencePiece vocabulary trained on it. Stage `finetune` (WORKDIR/finetune) starts from
that checkpoint (`init_from`: encoder, architecture and tokenizer come from it; the
classifier is new) and learns `embedded:classify`: is a sentence from the syntax pages or
the data-model / built-in-types pages? Its eval lines in WORKDIR/finetune/metrics.jsonl
carry accuracy, precision, recall, F1 and MCC on held-out sentences (chance: 50%).
Running the command again resumes (or finds both stages complete). ARG `smoke`: 2 steps
per stage.
"""

from pjx import config as config_lib


def get_config(arg: str = ""):
    c = config_lib.base_config()
    c.model.name, c.model.size, c.task = "bert", "tiny", "mlm"
    c.model.max_position_embeddings = 128
    c.data.source, c.eval_data.source = "embedded[:95%]", "embedded[95%:]"
    c.data.seq_len = 64
    c.data.tokenizer = "train:sentencepiece?vocab_size=2000&model_type=unigram"
    c.batch_size, c.eval_batch_size, c.steps = 32, 64, 800
    # Derived from `steps` by reference: each stage's `steps` moves them (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=1e-3, warmup_steps=steps // 10, schedule="linear", weight_decay=0.01)
    )
    c.log_every, c.eval_every, c.checkpoint_every = 50, steps // 2, steps // 2
    smoke = "smoke" in arg.split(",")
    c.stages = (
        ("pretrain", {"steps": 2} if smoke else {}),
        (
            "finetune",
            {
                "task": "classify",
                "init_from": "stage:pretrain",
                "model.num_labels": 2,
                "data.source": "embedded:classify[:80%]",
                "eval_data.source": "embedded:classify[80%:]",
                "steps": 2 if smoke else 300,
                "optimizer.lr": 2e-4,
                "eval_every": 100,
                "checkpoint_every": 100,
                "best_metric": "accuracy",
            },
        ),
    )
    return c
