"""ModernBERT masked-LM pretraining (Warner et al. 2024: pre-norm without biases, GeGLU,
RoPE, global attention every third layer and 128-token local windows between) on
WikiText-2; fine-tune the result, or a Hub checkpoint, with configs/glue.py.

    pjx train --config configs/modernbert_mlm.py --workdir runs/modernbert
    pjx train --config configs/modernbert_mlm.py:smoke --workdir /tmp/modernbert_smoke
    pjx train --config configs/glue.py:sst2 --workdir runs/sst2_modernbert \
        --config.model.name=modernbert --config.init_from=runs/modernbert

ARG (comma-separated): a size preset (tiny mini base large; default mini), `smoke` (tiny,
2 steps, embedded corpus). ModernBERT's recipe (sec. 2.2): 30% of the tokens masked, no
next-sentence prediction; the data, vocabulary and optimizer are configs/bert_mlm.py's.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bert_mlm  # noqa: E402

SIZES = ("tiny", "mini", "base", "large")


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    c = bert_mlm.get_config(",".join(args - set(SIZES)))
    c.model.name = "modernbert"
    c.model.size = next((a for a in args if a in SIZES), "mini")
    c.task_args.mask_rate = 0.3
    return c
