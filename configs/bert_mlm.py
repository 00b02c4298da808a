"""BERT masked-LM pretraining (Devlin et al. 2019) on WikiText-2.

    pjx train --config configs/bert_mlm.py --workdir runs/bert_mlm
    pjx train --config configs/bert_mlm.py:base,nsp --workdir runs/bert_base   # + NSP
    pjx train --config configs/bert_mlm.py:smoke --workdir /tmp/bert_smoke    # CPU, seconds

ARG (comma-separated): a size preset (tiny mini small medium base large; default mini),
`nsp` (next-sentence prediction pairs), `smoke` (tiny model, 2 steps, embedded corpus).
Data: a local WikiText-2 (`$PJX_DATA/wikitext2/train.txt.gz`, PJX_DATA defaults to
../shared/data); any other text with --config.data.source=text:PATH_OR_GLOB. The last 5%
of the lines are held out for evaluation. A SentencePiece vocabulary with BERT's special
tokens is trained into the workdir on the first run.

Data modes (`--config.data.mode`; unset: chosen by the source and logged): `cached` reads
and encodes the source once (WikiText-2, anything below data.stream_above); `stream`
reads text: / jsonl: / parquet: globs chunk by chunk in Grain workers (data.workers),
memory flat in the corpus size, e.g.
    --config.data.source='parquet:/data/wiki/*.parquet' --config.data.mode=stream
    --config.data.tokenizer=tok/ --config.data.workers=8
(a stream has no slice: give eval_data its own source); `prepared` reads the ArrayRecord
rows of `pjx data prepare --config configs/bert_mlm.py --config.data.source=... --out DIR`
with --config.data.source=prepared:DIR --config.data.tokenizer=DIR/tokenizer.
"""

import os

from pjx import config as config_lib

DATA = os.environ.get("PJX_DATA", "../shared/data")
SIZES = ("tiny", "mini", "small", "medium", "base", "large")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = config_lib.base_config()
    c.model.name, c.task = "bert", "mlm"
    c.model.size = next((a for a in args if a in SIZES), "mini")
    corpus = f"text:{DATA}/wikitext2/train.txt.gz"
    c.data.source, c.eval_data.source = corpus + "[:95%]", corpus + "[95%:]"
    c.data.seq_len = 128
    c.data.tokenizer = "train:sentencepiece?vocab_size=8192&model_type=unigram"
    c.task_args.mask_rate = 0.15
    if "nsp" in args:  # sentence pairs, 50% real next segment
        c.task_args.nsp = True
    c.batch_size, c.steps = 128, 20_000
    # Derived from `steps` by reference, so they follow --config.steps (pjx.config).
    steps = c.get_ref("steps")
    c.optimizer.update(
        dict(lr=5e-4, warmup_steps=steps // 20, schedule="linear", weight_decay=0.01)
    )
    c.log_every, c.eval_every, c.checkpoint_every = 100, steps // 10, steps // 10
    c.eval_steps = 50
    if "smoke" in args:
        config_lib.make_smoke(c)
    return c
