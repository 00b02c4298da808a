"""nanoGPT's character-level Tiny Shakespeare recipe in pjx and in nanoGPT, on this machine.

  python benchmarks/nanogpt_shakespeare.py                          # pjx only
  python benchmarks/nanogpt_shakespeare.py --nanogpt /tmp/nanoGPT  # pjx, then nanoGPT
  python benchmarks/nanogpt_shakespeare.py --nanogpt /tmp/nanoGPT --steps 200 --repeats 3
  python benchmarks/nanogpt_shakespeare.py --nanogpt /tmp/nanoGPT --full-eval --keep

pjx runs `pjx train --config configs/gpt2_lm.py:shakespeare_char` (4 layers, 4 heads, width
128, context 64, batch 12, lr 1e-3 cosine to 1e-4 after 100 warm-up steps, AdamW b2 0.99,
wd 0.1, clip 1.0, no dropout, last 10% held out). nanoGPT (a checkout given by --nanogpt:
train.py, model.py, configurator.py, config/, data/shakespeare_char/prepare.py) runs its
README's CPU recipe, `train.py config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=N --lr_decay_iters=N --dropout=0.0`, in a scratch copy of the
checkout with the same input.txt (so prepare.py downloads nothing; it is timed apart).

The runs alternate (pjx, nanoGPT, pjx, ...), one process at a time so they never share the
cores. Per run: `wall_s` (the whole process: imports, data preparation, compilation,
training, evaluation, checkpoints), `step_ms` (pjx: the median of the `step_s` of the train
lines of metrics.jsonl, each an average over a window of `log_every` = 50 steps, so the
windows holding an evaluation include it; nanoGPT: the median of its per-iteration `time`,
and `step_ms_w50`, the median of its means over the same windows of 50, which is what to
set against pjx's when other processes took some of the cores: a median of single
iterations skips the slowed ones, one of window means does not), `load_1m` (the 1-minute
load average as the run ends: ~2 is the run itself on 2 cores, more means company),
`loss` (the last held-out evaluation: pjx on `eval_steps` batches in order from the start of
the held-out rows, 0 = all of them; nanoGPT on `eval_iters` batches of random windows of its
val split; pjx holds out the last 10% of the lines and predicts 63 targets per row of 64,
nanoGPT the last 10% of the characters and 64 per window), `steps`, and for pjx `compile_s`.
Short runs evaluate every steps // 4 (pjx) or steps // 8 (nanoGPT) steps, so with --steps
200 most of pjx's 50-step windows hold an evaluation. Prints a table, then medians over the
repeats as one JSON line, the last line of output; ratios are pjx / nanoGPT (below 1: pjx
faster).
Run it on an otherwise idle machine: both sides' times move with any other load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "gpt2_lm.py") + ":shakespeare_char"
# Where configs/gpt2_lm.py reads data from (PJX_DATA, relative to the project root).
DATA = os.path.abspath(os.path.join(ROOT, os.environ.get("PJX_DATA", "../shared/data")))
# What the nanoGPT run needs from a checkout (copied, so the checkout itself stays clean).
NANOGPT_FILES = (
    "train.py",
    "model.py",
    "configurator.py",
    "config/train_shakespeare_char.py",
    "data/shakespeare_char/prepare.py",
)
NANOGPT_EVAL_INTERVAL = 250  # config/train_shakespeare_char.py, for its 2,000 README steps
PJX_LOG_EVERY = 50  # configs/gpt2_lm.py:shakespeare_char: one metrics.jsonl train line per 50


def log(msg: str) -> None:
    # Progress goes to stderr so that the JSON line stays the last line of stdout.
    print(msg, file=sys.stderr, flush=True)


def run_logged(cmd: list[str], cwd: str, log_path: str, env=None) -> tuple[float, str]:
    """Runs `cmd` with stdout + stderr into `log_path`; returns (wall seconds, the output)."""
    with open(log_path, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    with open(log_path, errors="replace") as f:
        out = f.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}); log {log_path}:\n{out[-3000:]}"
        )
    return wall, out


# ------------------------------------------------------------------------------------ pjx
def run_pjx(steps: int, extra: list[str], keep: bool) -> dict:
    workdir = tempfile.mkdtemp(prefix="pjx_shakespeare_")
    overrides = [f"--config.steps={steps}"] + [
        a if a.startswith("--config.") else f"--config.{a}" for a in extra
    ]
    cmd = [sys.executable, "-m", "pjx.cli", "train", "--config", CONFIG, "--workdir", workdir]
    # An absolute PJX_DATA, so the config finds the data wherever it resolves paths from.
    env = {**os.environ, "PJX_DATA": DATA}
    log(f"pjx: {' '.join(cmd + overrides)}")
    wall, out = run_logged(cmd + overrides, ROOT, os.path.join(workdir, "train.log"), env)
    load = os.getloadavg()[0]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    if not train or not evals:
        raise RuntimeError(f"no train or eval lines in {workdir}/metrics.jsonl")
    compiled = re.findall(r"compiled train step in ([\d.]+)\s*s", out)
    final = evals[-1]
    # The config the run resolved (overrides applied): what its evaluations really used.
    with open(os.path.join(workdir, "config.json")) as f:
        resolved = json.load(f)
    result = {
        "wall_s": wall,
        "step_ms": 1e3 * statistics.median(r["step_s"] for r in train),
        "loss": final["loss"],
        "steps": train[-1]["step"],
        "compile_s": float(compiled[-1]) if compiled else None,
        # From the end of compilation to the last train line (the final eval excluded).
        "loop_s": train[-1].get("elapsed_s"),
        "eval_step": final["step"],
        "eval_batches": resolved.get("eval_steps"),  # 0 = the whole held-out set
        "eval_count": final.get("count"),  # what the task counted (predicted tokens)
        "train_lines": len(train),
        "load_1m": load,
        "workdir": workdir if keep else None,
    }
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -------------------------------------------------------------------------------- nanoGPT
def nanogpt_eval_interval(steps: int) -> int:
    """250 for the README's 2,000 steps; else steps // 8, lowered to a divisor of `steps` so
    the last evaluation falls on the last step (nanoGPT evaluates when iter % interval == 0)."""
    if steps == 2000:
        return NANOGPT_EVAL_INTERVAL
    return next(d for d in range(max(steps // 8, 1), 0, -1) if steps % d == 0)


def run_nanogpt(checkout: str, input_txt: str, steps: int, keep: bool) -> dict:
    scratch = tempfile.mkdtemp(prefix="nanogpt_shakespeare_")
    for rel in NANOGPT_FILES:
        os.makedirs(os.path.dirname(os.path.join(scratch, rel)) or scratch, exist_ok=True)
        shutil.copy(os.path.join(checkout, rel), os.path.join(scratch, rel))
    data_dir = os.path.join(scratch, "data", "shakespeare_char")
    # prepare.py downloads input.txt only when it is missing next to it: it is not.
    shutil.copy(input_txt, os.path.join(data_dir, "input.txt"))
    env = dict(os.environ)
    if importlib.util.find_spec("requests") is None:
        # prepare.py imports requests unconditionally but needs it only for the download.
        stub = os.path.join(scratch, "stub")
        os.makedirs(stub)
        with open(os.path.join(stub, "requests.py"), "w") as f:
            f.write('def get(url):\n    raise RuntimeError("no download: " + url)\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [stub, env.get("PYTHONPATH")]))
    prepare_s, _ = run_logged(
        [sys.executable, "data/shakespeare_char/prepare.py"],
        scratch,
        os.path.join(scratch, "prepare.log"),
        env,
    )
    interval = nanogpt_eval_interval(steps)
    cmd = [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        "--block_size=64",
        "--batch_size=12",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        "--dropout=0.0",
        f"--out_dir={os.path.join(scratch, 'out')}",
        "--always_save_checkpoint=False",  # as the config file already sets
    ]
    if interval != NANOGPT_EVAL_INTERVAL:
        cmd.append(f"--eval_interval={interval}")
    log(f"nanoGPT (in {scratch}): {' '.join(cmd[1:])}")
    # train.py reads configurator.py and data/ relative to the working directory.
    wall, out = run_logged(cmd, scratch, os.path.join(scratch, "train.log"), env)
    load = os.getloadavg()[0]
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M)
    iters = re.findall(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", out, re.M)
    if not evals or not iters:
        raise RuntimeError(f"no 'step N: ...' or 'iter N: ...' lines in {scratch}/train.log")
    times = [float(t) for _, _, t in iters]
    # pjx's step_s averages windows of 50 steps; the same over iterations 1..50, 51..100, ...
    # (iteration 0 has no predecessor in pjx's first window) compares like with like when
    # other processes slow some of the steps down.
    windows = [times[i : i + PJX_LOG_EVERY] for i in range(1, len(times), PJX_LOG_EVERY)]
    result = {
        "wall_s": wall,
        "step_ms": statistics.median(times),
        "step_ms_w50": statistics.median(sum(w) / len(w) for w in windows),
        "loss": float(evals[-1][2]),
        "steps": int(evals[-1][0]),  # updates before the last eval
        "prepare_s": prepare_s,
        # Sum of the iteration times: the loop, evaluations on the way included.
        "loop_s": sum(times) / 1e3,
        "train_loss_eval": float(evals[-1][1]),
        "eval_step": int(evals[-1][0]),
        "eval_batches": 20,
        "eval_interval": interval,
        "iters_run": len(iters),  # iterations 0..max_iters: one past the last eval
        "load_1m": load,
        "workdir": scratch if keep else None,
    }
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------- report
def summarize(runs: list[dict]) -> dict:
    """Medians of the numeric fields over the repeats, plus the runs themselves."""
    out = {}
    for k, v in runs[0].items():
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        out[k] = statistics.median(vals) if numeric and len(vals) == len(runs) else v
    if len(runs) > 1:
        out["runs"] = runs
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"{'run':<16} {'wall s':>8} {'step ms':>8} {'loss':>7} {'steps':>6} {'compile s':>9}")
    for name, r in rows:
        print(
            f"{name:<16} {_fmt(r['wall_s'], '8.1f')} {_fmt(r['step_ms'], '8.2f')} "
            f"{_fmt(r['loss'], '7.4f')} {r['steps']:>6} {_fmt(r.get('compile_s'), '9.1f')}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", help="a nanoGPT checkout (train.py, model.py, data/, ...)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (both sides)")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each; medians")
    p.add_argument(
        "--pjx-arg",
        action="append",
        default=[],
        help="extra pjx override, e.g. eval_steps=0 or --config.seed=1 (repeatable)",
    )
    p.add_argument(
        "--full-eval",
        action="store_true",
        help="one more pjx run that evaluates the whole held-out 10%% (eval_steps=0)",
    )
    p.add_argument("--keep", action="store_true", help="keep the workdirs (paths in the JSON)")
    p.add_argument("--data", default=os.path.join(DATA, "tinyshakespeare", "input.txt"))
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be positive")
    if args.nanogpt:
        missing = [f for f in NANOGPT_FILES if not os.path.isfile(os.path.join(args.nanogpt, f))]
        if missing:
            p.error(f"--nanogpt {args.nanogpt} lacks {', '.join(missing)}")
    if not os.path.isfile(args.data):
        p.error(f"no Tiny Shakespeare at {args.data} (set PJX_DATA or --data)")

    pjx_runs, nano_runs = [], []
    for i in range(args.repeats):
        log(f"--- repeat {i + 1}/{args.repeats}")
        pjx_runs.append(run_pjx(args.steps, args.pjx_arg, args.keep))
        log(f"pjx: {json.dumps(pjx_runs[-1])}")
        if args.nanogpt:
            nano_runs.append(run_nanogpt(args.nanogpt, args.data, args.steps, args.keep))
            log(f"nanoGPT: {json.dumps(nano_runs[-1])}")
    full = None
    if args.full_eval:
        log("--- pjx, evaluating the whole held-out text")
        full = run_pjx(args.steps, args.pjx_arg + ["eval_steps=0"], args.keep)
        log(f"pjx full eval: {json.dumps(full)}")

    pjx, nano = summarize(pjx_runs), summarize(nano_runs) if nano_runs else None
    rows = [("pjx", pjx)] + ([("nanoGPT", nano)] if nano else [])
    rows += [("pjx (full eval)", full)] if full else []
    print_table(rows)
    result = {
        "pjx": pjx,
        "nanogpt": nano,
        "ratio_wall": pjx["wall_s"] / nano["wall_s"] if nano else None,
        "ratio_step": pjx["step_ms"] / nano["step_ms"] if nano else None,
        "ratio_step_w50": pjx["step_ms"] / nano["step_ms_w50"] if nano else None,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    if full:
        result["pjx_full_eval"] = full
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
