"""What watching a run costs: the per-step phase bookkeeping of pjx.telemetry (what
pjx.loop does around every step) and one wake-up of the watchdog thread (once a second),
against a BERT-mini train step measured here by `pjx bench`'s code.

    python benchmarks/watchdog_overhead.py            # prints one JSON line

overhead = (bookkeeping per step + wake-ups per step x one wake-up) / step time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from pjx import bench, bench_from_config, telemetry, watchdog  # noqa: E402
from pjx import config as config_lib  # noqa: E402


def per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n


def main():
    phases = telemetry.Phases()

    def bookkeeping(i):
        with phases.phase("data_wait"):
            pass
        with phases.phase("step"):
            pass
        phases.progress(i)

    dog = watchdog.Watchdog(phases, tempfile.mkdtemp(), None)
    book_s = per_call(bookkeeping, 100_000)
    wake_s = per_call(lambda i: dog.check(), 20_000)  # a fresh step: no stall to find
    config = config_lib.load(os.path.join(os.path.dirname(__file__), "bench_config.py:bert_mini"))
    plan, tokenizer = bench_from_config.resolve(config)
    step_s = bench.run(plan, tokenizer=tokenizer, steps=5, warmup=1)["step_s"]
    wakes_per_step = step_s / dog.poll_s
    overhead = (book_s + wakes_per_step * wake_s) / step_s
    print(json.dumps(dict(bookkeeping_us=book_s * 1e6, wake_us=wake_s * 1e6,
                          bert_mini_step_s=step_s, overhead_fraction=overhead)))  # fmt: skip


if __name__ == "__main__":
    main()
