"""ELECTRA pretraining (Clark et al. 2020): replaced-token detection on WikiText-2.

    pjx train --config configs/electra.py --workdir runs/electra
    pjx train --config configs/electra.py:small --workdir runs/electra_small
    pjx train --config configs/electra.py:smoke --workdir runs/electra_smoke   # CPU, seconds

ARG (comma-separated): a size preset of the discriminator (tiny mini small medium base
large; default mini), `smoke` (tiny model, 2 steps, embedded corpus). The generator is an
MLM encoder of `electra.generator_size` (default 0.25) of the discriminator's width, heads
and MLP at the same depth, sharing its embeddings; the loss is the generator's MLM loss +
`electra.rtd_weight` (default 50) x the discriminator's, as in the paper, e.g.
    --config.electra.generator_size=0.5 --config.electra.rtd_weight=50

Fine-tune the discriminator (the BERT encoder, without the generator) from the workdir:
    pjx train --config configs/glue.py:sst2 --workdir runs/sst2 --config.init_from=runs/electra

Data as in configs/bert_mlm.py: a local WikiText-2 (`$PJX_DATA/wikitext2/train.txt.gz`,
PJX_DATA defaults to ../shared/data), or --config.data.source=text:PATH_OR_GLOB; the last 5%
of the lines are held out for evaluation; a SentencePiece vocabulary with BERT's special
tokens is trained into the workdir on the first run.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
SIZES = ("tiny", "mini", "small", "medium", "base", "large")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "electra"
    c.model.size = next((a for a in args if a in SIZES), "mini")
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = 128
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=unigram"
    c.task_args.mask_rate = 0.15
    c.electra.generator_size, c.electra.rtd_weight = 0.25, 50.0
    c.batch_size, c.steps = 128, 20_000
    # ELECTRA-Small's optimizer (Table 6): lr 5e-4, linear decay, 1e4 warm-up steps of 1e6,
    # weight decay 0.01; the warm-up here is 5% of the steps, derived after the overrides.
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=5e-4, warmup_steps=steps // 20, schedule="linear", weight_decay=0.01)
    )
    c.log_every, c.eval_every, c.checkpoint_every = 100, steps // 10, steps // 10
    c.eval_steps = 50
    if "smoke" in args:
        config_lib.make_smoke(c)
    return c
