"""Where a compiled train step's time goes on XLA:CPU, per HLO instruction.

  python benchmarks/cpu_step_profile.py
  taskset -c 0 python benchmarks/cpu_step_profile.py --top 20        # one core: no overlap
  python benchmarks/cpu_step_profile.py --config configs/vit_cls.py:smoke --steps 5

Runs `pjx bench`'s step (synthetic batches of the config's shapes) under jax.profiler with
XLA:CPU's per-thunk trace events on (`--xla_cpu_enable_xprof_traceme`), then prints the
instructions that took longest per step with their shapes and the jax op that made them
(from the compiled HLO's metadata), and the total per instruction kind. Thunks on different
threads overlap, so on more than one core the per-step total exceeds the step time; pin the
process to one core (taskset) for a breakdown that adds up. The tokenizer is the run's
(a `train:` spec is trained on the config's data once, into the data cache), so the
vocabulary is the one training would see.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "gpt2_lm.py") + ":shakespeare_char"
TRACEME = "--xla_cpu_enable_xprof_traceme=true"
# An HLO instruction's name (`ynn_fusion.12`, `dot.3`, `multiply_add_fusion`).
INSTRUCTION = re.compile(r"^[a-z][\w\-]*(\.\d+)?$")


def instructions(hlo_text: str) -> dict:
    """name -> (shape, jax op name, what its fused computation does) of the entry's ops."""
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^%?([\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo_text, re.S | re.M)
    }
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([a-z][\w\-]*)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        jax_op = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        body = bodies.get(calls.group(1), "") if calls else ""
        kinds = collections.Counter(re.findall(r"= \S+ ([a-z][\w\-]*)\(", body))
        for boring in ("parameter", "bitcast", "constant", "broadcast"):
            kinds.pop(boring, None)
        does = " ".join(f"{k}x{v}" for k, v in kinds.items()) or op
        out[name] = (shape, jax_op.group(1) if jax_op else "", does)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--steps", type=int, default=20, help="profiled steps")
    ap.add_argument("--top", type=int, default=30, help="instructions to list")
    args, overrides = ap.parse_known_args(argv)
    if TRACEME not in os.environ.get("XLA_FLAGS", ""):  # before jax starts its backend
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TRACEME).strip()
    from pjx import xla_cpu

    xla_cpu.install_if_cpu()
    import jax

    from pjx import bench, bench_from_config, sharding
    from pjx import config as config_lib

    # A `train:` tokenizer is trained on the config's data, as `pjx train` would.
    config = config_lib.load(args.config, overrides)
    plan, tokenizer = bench_from_config.resolve(config, train_tokenizer=True)
    s, compiled, state, (device_batch,), _ = bench.compiled_step(plan, tokenizer=tokenizer)
    hlo = instructions(compiled.as_text())
    with sharding.context(s.mesh):
        for _ in range(3):  # warm up outside the trace
            state, mets = compiled(state, device_batch)
        jax.block_until_ready((state, mets))
        with tempfile.TemporaryDirectory() as trace_dir:
            options = jax.profiler.ProfileOptions()
            options.host_tracer_level = 3  # the level that records XLA:CPU's thunk events
            jax.profiler.start_trace(
                trace_dir, create_perfetto_trace=True, profiler_options=options
            )
            for _ in range(args.steps):
                state, mets = compiled(state, device_batch)
                jax.block_until_ready((state, mets))
            jax.profiler.stop_trace()
            pattern = os.path.join(trace_dir, "**", "perfetto_trace.json.gz")
            (path,) = glob.glob(pattern, recursive=True)
            with gzip.open(path) as f:
                trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_instruction = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in hlo and INSTRUCTION.match(e["name"]):
            per_instruction[e["name"]] += e["dur"] / 1e3 / args.steps  # ms per step
    per_kind = collections.Counter()
    for name, ms in per_instruction.items():
        per_kind[re.sub(r"\.\d+$", "", name)] += ms
    print(
        f"{args.config}: {len(per_instruction)} instructions ran, "
        f"{sum(per_instruction.values()):.2f} ms of thunks per step"
    )
    print(f"{'ms/step':>8}  {'instruction':24} {'shape':26} does / jax op")
    for name, ms in per_instruction.most_common(args.top):
        shape, jax_op, does = hlo[name]
        print(f"{ms:8.3f}  {name:24} {shape[:26]:26} {does[:30]:30} {jax_op[-70:]}")
    print("\nper kind (ms/step): " + ", ".join(f"{k} {v:.2f}" for k, v in per_kind.most_common(12)))


if __name__ == "__main__":
    main()
