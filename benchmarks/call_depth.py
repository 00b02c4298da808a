"""How deep the `pjx` command calls before a task's loss runs: the pjx frames (and the
modules they sit in) between `pjx.cli.main` and `Task.loss` when the train step is traced.

  python benchmarks/call_depth.py                        # a plain run (BERT classifier)
  python benchmarks/call_depth.py --config.dp.noise_multiplier=1.0 \
      --config.data.tokenizer='byte?specials=bert'       # under DP-SGD (a public tokenizer)

Runs `pjx train` on configs/glue.py:sst2,smoke (2 steps on the first rows of $PJX_DATA/sst2,
from the checkout's root) in a temporary workdir
with the loss wrapped; prints one line per pjx frame (file:function), then the counts as
JSON on the last line. JAX's own frames (jit, grad, vmap) are not counted: they are the
transformations, not pjx's code.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from pjx import cli
    from pjx.tasks import classify

    seen = []
    loss = classify.Classify.loss

    @functools.wraps(loss)  # the task reads its options from the loss's signature
    def recorded(self, *args, **kwargs):
        if not seen:
            seen.extend(
                f for f in traceback.extract_stack()[:-1] if f"{os.sep}pjx{os.sep}" in f.filename
            )
        return loss(self, *args, **kwargs)

    classify.Classify.loss = recorded
    with tempfile.TemporaryDirectory() as workdir:
        argv = ["train", "--config", f"{ROOT}/configs/glue.py:sst2,smoke", "--workdir", workdir]
        argv += ["--config.write_curves=false", *sys.argv[1:]]
        cli.main(argv)
    frames = [f"{os.path.relpath(f.filename, ROOT)}:{f.name}" for f in seen]
    first = next(i for i, f in enumerate(frames) if f.startswith("pjx/cli/__init__.py:main"))
    frames = frames[first:]
    modules = sorted({f.split(":")[0] for f in frames})
    print("\n".join(frames))
    print(json.dumps({"frames": len(frames) + 1, "modules": len(modules) + 1}))


if __name__ == "__main__":
    main()
