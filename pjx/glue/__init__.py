"""GLUE (Wang et al. 2019) in one call: fine-tune one checkpoint on every task there is
data for, over several seeds, and tabulate each task's official metric.

    pjx glue runs/bert_mlm --out runs/glue --seeds 3 --config.steps=500
    pjx glue hf:/path/bert --out runs/glue --tasks rte,mrpc

    from pjx import glue
    results = glue.glue("runs/bert_mlm", "runs/glue", seeds=3)  # task -> metric -> stats

Each run is configs/glue.py:TASK with `init_from=SOURCE` (SOURCE `scratch`: none, a fresh
model) and `seed=S` (plus the caller's overrides), in OUT/TASK/seedS/: an ordinary pjx
workdir (`pjx eval`, `pjx plot` read it). A run whose last eval line is at its final step
is read back, not trained again; an unfinished one resumes from its checkpoints. The
scores are each run's last eval line (the held-out 10% of the task's training file, see
configs/glue.py). Written into OUT: glue.json (task -> metric -> {mean, std, values}; std
is the sample standard deviation, 0 for one seed), glue.md (a Markdown table stating the
step budget) and glue.png (means with std error bars), each holding every task OUT has
from this source (task groups run by separate calls, each with its own settings, share
one OUT); a run in OUT from another source is refused, not read back as this source's.
The label-efficiency curve
(`--labels`) is pjx.glue.curve.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pjx import config as config_lib
from pjx import resolution, uri
from pjx import run as run_lib
from pjx.checkpoint.saved import Saved
from pjx.data import files
from pjx.examples import DataError
from pjx.metrics_log import MetricsLog

log = logging.getLogger(__name__)

# GLUE's official metrics per task (Wang et al. 2019, Table 1).
METRICS = {
    "sst2": ("accuracy",),
    "cola": ("mcc",),  # Matthews correlation
    "mrpc": ("f1", "accuracy"),  # F1 of the positive (paraphrase) class
    "rte": ("accuracy",),
}
TASKS = tuple(METRICS)
# The recipes: configs/glue.py of the repository pjx is installed from.
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "glue.py")


# A SOURCE that is no checkpoint: random init, and the recipe's own tokenizer (configs/glue.py:
# a SentencePiece vocabulary trained on the run's training text, as the quickstart's
# baseline stage does).
SCRATCH = "scratch"


def task_config(task: str, source: str, seed: int, overrides=(), config: str = ""):
    """configs/glue.py:TASK fine-tuning `source` (`scratch`: from random init) with
    `seed`, then `overrides`."""
    spec = f"{config or DEFAULT_CONFIG}:{task}"
    own = [f"--config.seed={seed}"]
    if source != SCRATCH:
        own.insert(0, f"--config.init_from={source}")
    return config_lib.load(spec, [*own, *overrides])


def missing_data(cfg) -> list[str]:
    """The files a config reads that are not there ([] when all are, or when its sources
    are not files: tfds:, embedded)."""
    out = []
    for source in (cfg.data.source, cfg.eval_data.source):
        if not source:
            continue
        u = uri.parse_uri(source)
        if u.kind in ("tfds", "embedded"):
            continue
        if u.kind in ("idx", "prepared"):  # folders
            if not os.path.isdir(os.path.expanduser(u.path)):
                out.append(u.path)
            continue
        try:
            files.expand(u.path)
        except DataError:
            out.append(u.path)
    return sorted(set(out))


def finished(cfg, workdir) -> bool:
    """Whether `workdir` holds the final eval line of `cfg`'s run."""
    last = MetricsLog.last_record(workdir)
    steps = int(resolution.resolve_data(cfg).steps)
    return last.get("split") == "eval" and int(last.get("step", -1)) >= steps


def _trained_from(workdir) -> str | None:
    """The `init_from` a run in `workdir` started from ('' from scratch), None if no run
    started there."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return None
    return str(json.loads(path.read_text()).get("init_from") or "")


def check_source(cfg, workdir) -> None:
    """Refuses a workdir that holds a run fine-tuned from another source than `cfg`'s: read
    back (or resumed), its scores would be reported as this source's."""
    was, now = _trained_from(workdir), str(cfg.get("init_from") or "")
    if was is not None and was != now:
        raise ValueError(
            f"{workdir} holds a run fine-tuned from {was or SCRATCH!r}, not from "
            f"{now or SCRATCH!r}: give each source its own --out"
        )


def _finished_from(workdir, source: str) -> bool:
    """Whether `workdir` holds a finished run (its last line an eval line) from `source`."""
    now = "" if source == SCRATCH else str(source)
    return _trained_from(workdir) == now and MetricsLog.last_record(workdir).get("split") == "eval"


def glue(
    source: str,
    out,
    *,
    tasks=None,
    seeds: int = 3,
    overrides=(),
    config: str = "",
    command: str = "",
) -> dict:
    """Fine-tunes `source` on each task (default: every task with data) for seeds 0..N-1;
    writes OUT/glue.json, glue.md, glue.png; returns glue.json's contents."""
    runnable = runnable_tasks(tasks, source, seeds, overrides, config)
    out = Path(out)
    for task in runnable:  # before any run starts: OUT holds no other source's runs
        for seed in range(seeds):
            check_source(task_config(task, source, seed, overrides, config),
                         out / task / f"seed{seed}")  # fmt: skip
    for task in runnable:
        for seed in range(seeds):
            cfg = task_config(task, source, seed, overrides, config)
            workdir = out / task / f"seed{seed}"
            if finished(cfg, workdir):
                log.info(f"glue: {task} seed {seed} already done in {workdir}")
            else:
                log.info(f"=== glue: {task} seed {seed} -> {workdir}")
                run_lib.train(cfg, str(workdir))
    # This call's tasks, and those an earlier call ran into OUT from the same source (task
    # groups are often run with their own settings, one call each): every task OUT has.
    values, budget = {}, {}
    for task in TASKS:
        runs = [out / task / f"seed{s}" for s in range(seeds)]
        if task not in runnable and not all(_finished_from(w, source) for w in runs):
            continue
        for workdir in runs:
            last = MetricsLog.last_record(workdir)
            budget.setdefault(task, set()).add(_budget(workdir))
            for metric in METRICS[task]:
                values.setdefault(task, {}).setdefault(metric, []).append(float(last[metric]))
    results = {
        task: {metric: summarize(v) for metric, v in per.items()} for task, per in values.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "glue.json").write_text(json.dumps(results, indent=2) + "\n")
    budget = {task: "; ".join(sorted(b)) for task, b in budget.items()}
    (out / "glue.md").write_text(table(results, source, budget, command))
    chart(results, out / "glue.png", title=f"GLUE dev (held out), {seeds} seed(s): {source}")
    log.info(table(results, source, budget, command))
    log.info(f"glue: wrote {out / 'glue.json'}, {out / 'glue.md'}, {out / 'glue.png'}")
    return results


def runnable_tasks(tasks, source: str, seeds: int, overrides=(), config: str = "") -> list:
    """The tasks asked for (None: every task) that have data; raises ValueError on a bad
    task or seed count, FileNotFoundError when an asked-for task (or every task) has none."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    explicit = tasks is not None
    tasks = list(tasks) if explicit else list(TASKS)
    unknown = [t for t in tasks if t not in METRICS]
    if unknown:
        raise ValueError(f"unknown GLUE task(s) {unknown}: pick from {', '.join(TASKS)}")
    runnable, absent = [], {}
    for task in tasks:
        gone = missing_data(task_config(task, source, 0, overrides, config))
        if gone:
            absent[task] = gone
        else:
            runnable.append(task)
    where = "; ".join(f"{t}: {', '.join(p)}" for t, p in absent.items())
    if not runnable or (explicit and absent):
        raise FileNotFoundError(
            f"no GLUE data for {', '.join(absent)} ({where}). configs/glue.py reads "
            "$PJX_DATA/TASK/train.tsv (PJX_DATA defaults to ../shared/data); set PJX_DATA "
            "or pass --config.data.source / --config.eval_data.source"
        )
    if absent:
        log.info(f"glue: skipped, no data: {where}")
    return runnable


def summarize(values) -> dict:
    """{mean, std (sample, ddof=1; 0 for one value), values}."""
    v = np.asarray(values, np.float64)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "values": [float(x) for x in v]}


def _budget(workdir) -> str:
    """What a finished run trained with, from the config its checkpoint saved (a table built
    by a later call reports the runs as they ran, whatever that call's overrides)."""
    c = Saved(workdir).raw_config  # the JSON config alone: no model, no parameters
    shape = [c["steps"], c["batch_size"], c["data"].get("seq_len") or 0]
    return " x ".join(str(int(n)) for n in shape) + f", lr {float(c['optimizer']['lr']):g}"


def table(results: dict, source: str, budget: dict, command: str = "") -> str:
    """The Markdown table of glue.json: one row per task and metric."""
    seeds = max((len(s["values"]) for per in results.values() for s in per.values()), default=0)
    lines = [
        f"GLUE, fine-tuned from `{source}`: mean ± std over {seeds} seed(s), on the held-out "
        "10% of each task's training file.",
        "",
    ]
    if command:
        lines += ["    " + command, ""]
    lines += [
        "| task | metric | mean ± std | per seed | steps x batch x seq_len, lr |",
        "|---|---|---|---|---|",
    ]
    for task, per in results.items():
        for metric, s in per.items():
            each = ", ".join(f"{x:.3f}" for x in s["values"])
            lines.append(
                f"| {task} | {metric} | {s['mean']:.3f} ± {s['std']:.3f} | {each} "
                f"| {budget.get(task, '')} |"
            )
    return "\n".join(lines) + "\n"


def chart(results: dict, path, title: str = "") -> Path:
    """A bar per (task, metric): the mean, with the std as an error bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [f"{t}\n{m}" for t, per in results.items() for m in per]
    stats = [s for per in results.values() for s in per.values()]
    fig = Figure(figsize=(1.4 * len(names) + 2, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=6)
    for xi, s in zip(x, stats):
        top = s["mean"] + s["std"]
        ax.text(xi, top + 0.01, f"{s['mean']:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("score")
    ax.set_ylim(min(0.0, *(s["mean"] - s["std"] for s in stats)), 1.05)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
