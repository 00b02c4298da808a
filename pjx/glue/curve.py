"""The label-efficiency curve: GLUE scores against the number of labelled rows a source is
fine-tuned on, for several sources side by side (what a pretraining run buys, by labels).

    pjx glue scratch runs/bert_mlm --labels 100,300,1000 --tasks sst2,mrpc --out runs/curve

    from pjx.glue import curve
    results = curve.run(["scratch", "runs/bert_mlm"], "runs/curve", "100,300,1000")

For each task and seed S (0..seeds-1) the task's training rows (configs/glue.py's
`data.source`, the first 90% of its train.tsv) are permuted by
`numpy.random.default_rng(S)`, and the first N of them are written to
OUT/rows/TASK/seedS/nN.tsv (columns: `row`, the row's index in the training source, the
text(s), `label`, the class name; n100.tsv is the head of n300.tsv). Every source at that
N and seed fine-tunes on that file: the same rows, told apart only by where they start.
Each run is configs/glue.py:TASK with `init_from=SOURCE`, `seed=S` and the caller's
overrides, in OUT/NAME/TASK/nN/seedS/ (NAME: `scratch`, else the source's folder name),
scored as `pjx glue` scores (the held-out last 10% of the task's train.tsv, the task's
first GLUE metric). `scratch` is the recipe without `init_from`: a fresh model and a
SentencePiece vocabulary trained on the N rows' text, as the quickstart's `scratch` stage.
Finished runs are read back. Written into OUT: curve.json (source -> task -> N -> {metric,
mean, std, values, per_seed}), curve.md (a table, one column per N) and curve.png (one
panel per task, one line per source, N on a log axis, std error bars).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np

from pjx import config as config_lib
from pjx import resolution
from pjx import run as run_lib
from pjx.data import sources
from pjx.glue import (
    METRICS,
    SCRATCH,
    TASKS,
    _budget,
    check_source,
    finished,
    runnable_tasks,
    summarize,
    task_config,
)
from pjx.metrics_log import MetricsLog

log = logging.getLogger(__name__)


def parse_labels(text, tasks=()) -> list[int]:
    """`--labels 100,300,1000` -> [100, 300, 1000] (sorted, once each); ValueError naming
    the flag (and `tasks`, the tasks the sizes are for) for anything but positive integers."""
    given = text if isinstance(text, str) else ",".join(map(str, text))
    parts = [p.strip() for p in given.split(",")]
    where = f" for {', '.join(tasks)}" if tasks else ""
    sizes = []
    for p in parts:
        n = int(p) if p.lstrip("+").isdigit() else 0
        if n < 1:
            raise ValueError(
                f"--labels {given}: {p!r} is not a number of labelled rows{where} "
                "(comma-separated positive integers, e.g. --labels 100,300,1000)"
            )
        sizes.append(n)
    return sorted(set(sizes))


def training_rows(cfg):
    """The examples of a config's training source (its slice applied): the rows a subset
    is drawn from."""
    num_labels = int(cfg.model.get("num_labels", 0) or 0)
    return sources.read(str(cfg.data.source), cfg.data, need_labels=True, num_labels=num_labels)


def write_rows(ex, seed: int, sizes, folder) -> dict[int, Path]:
    """FOLDER/nN.tsv for each N: the first N of the training rows permuted by
    `numpy.random.default_rng(seed)`, in that order (so n100.tsv is the head of n300.tsv).
    Columns: `row` (the row's index in the training source), the text(s), `label` (the class
    name). A file already holding those rows is left as it is (its time keys the data
    cache)."""
    order = np.random.default_rng(seed).permutation(len(ex))
    names = list(ex.label_names) or [str(i) for i in range(int(ex.labels.max()) + 1)]
    texts = [ex.texts] if ex.texts_b is None else [ex.texts, ex.texts_b]
    head = ["row", *TEXT_COLUMNS[len(texts)], "label"]
    clean = lambda t: " ".join(str(t).replace("\t", " ").splitlines())  # noqa: E731
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in sizes:
        lines = ["\t".join(head)]
        for i in order[:n]:
            cols = [str(i), *(clean(t[i]) for t in texts), names[int(ex.labels[i])]]
            lines.append("\t".join(cols))
        path = out[n] = folder / f"n{n}.tsv"
        text = "\n".join(lines) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return out


TEXT_COLUMNS = {1: ("sentence",), 2: ("sentence1", "sentence2")}
# The data keys that say how a TSV's columns read: the rows file's own for training, the
# task's for evaluation (eval_data inherits data's unless it sets them).
LAYOUT_KEYS = ("preset", "header", "text_columns", "label_column", "labels")


def on_rows(cfg, path: Path, ex):
    """`cfg` training on the rows file `path` (written by `write_rows` from `ex`),
    evaluating on what it evaluated on before."""
    c = copy.deepcopy(cfg)
    for key in LAYOUT_KEYS:
        if key not in c.eval_data:
            config_lib.set_key(c, f"eval_data.{key}", c.data[key], parse=False)
    two = ex.texts_b is not None
    names = tuple(ex.label_names) or tuple(str(i) for i in range(int(ex.labels.max()) + 1))
    rows = dict(preset="", header=True, text_columns=TEXT_COLUMNS[1 + two])
    rows.update(label_column="label", labels=names, source=f"tsv:{path}")
    for key, value in rows.items():
        config_lib.set_key(c, f"data.{key}", value, parse=False)
    return c


def checked_rows(task: str, sizes, overrides, config):
    """Task's training rows, after checking that every size of the curve fits them."""
    base = resolution.resolve_data(task_config(task, SCRATCH, 0, overrides, config))
    ex, batch = training_rows(base), int(base.batch_size)
    for n in sizes:
        if n > len(ex):
            raise ValueError(
                f"--labels {n}: task {task} has {len(ex)} training rows ({base.data.source})"
                f"; pick sizes up to {len(ex)} for {task}, or leave it out with --tasks"
            )
        if n < batch:
            raise ValueError(
                f"--labels {n}: fewer rows than one batch of task {task} ({batch}); pick "
                f"sizes of at least {batch} or lower --config.batch_size"
            )
    return ex


def summarize_curve(values: dict) -> dict:
    """source -> task -> N -> seed -> score, as curve.json holds it (mean, std, values)."""
    return {
        source: {
            task: {
                str(n): {
                    "metric": METRICS[task][0],
                    **summarize(list(per.values())),
                    "per_seed": {str(s): v for s, v in per.items()},
                }
                for n, per in by_n.items()
            }
            for task, by_n in by_task.items()
        }
        for source, by_task in values.items()
    }


def run(
    sources_,
    out,
    labels,
    *,
    tasks=None,
    seeds: int = 3,
    overrides=(),
    config: str = "",
    command: str = "",
) -> dict:
    """The label-efficiency curve: each source (a checkpoint, or `scratch`) fine-tuned on
    the first N rows of a seeded permutation of each task's training rows, for each N of
    `labels` and seeds 0..S-1 (seed S: the same rows for every source). Writes
    OUT/rows/TASK/seedS/nN.tsv (the rows), OUT/NAME/TASK/nN/seedS/ (the runs),
    OUT/curve.json (source -> task -> N -> {metric, mean, std, values, per_seed}),
    curve.md and curve.png; returns curve.json's contents. Bad input (a size that is not a
    positive integer, N above a task's training rows or below its batch) raises ValueError
    before anything is written."""
    sizes = parse_labels(labels, tasks or TASKS)
    srcs = list(dict.fromkeys(sources_))
    if not srcs:
        raise ValueError("pjx glue: give at least one SOURCE")
    runnable = runnable_tasks(tasks, srcs[0], seeds, overrides, config)
    rows = {task: checked_rows(task, sizes, overrides, config) for task in runnable}
    out, names = Path(out), workdir_names(srcs)
    for task in runnable:  # before any run starts: OUT holds no other source's runs
        for seed in range(seeds):
            for source in srcs:
                cfg = task_config(task, source, seed, overrides, config)
                for n in sizes:
                    check_source(cfg, out / names[source] / task / f"n{n}" / f"seed{seed}")
    values, budget = {}, {}
    for task in runnable:
        metric = METRICS[task][0]
        for seed in range(seeds):
            files = write_rows(rows[task], seed, sizes, out / "rows" / task / f"seed{seed}")
            for source in srcs:
                for n in sizes:
                    cfg = on_rows(
                        task_config(task, source, seed, overrides, config), files[n], rows[task]
                    )
                    workdir = out / names[source] / task / f"n{n}" / f"seed{seed}"
                    if finished(cfg, workdir):
                        log.info(f"glue: {source} {task} N={n} seed {seed} already done")
                    else:
                        log.info(f"=== glue: {source} {task} N={n} seed {seed} -> {workdir}")
                        run_lib.train(cfg, str(workdir))
                    score = float(MetricsLog.last_record(workdir)[metric])
                    values.setdefault(source, {}).setdefault(task, {}).setdefault(n, {})[seed] = (
                        score
                    )
                    budget.setdefault((source, task), set()).add(_budget(workdir))
    results = summarize_curve(values)
    (out / "curve.json").write_text(json.dumps(results, indent=2) + "\n")
    budget = {k: "; ".join(sorted(b)) for k, b in budget.items()}
    (out / "curve.md").write_text(curve_table(results, budget, seeds, command))
    curve_chart(
        results, out / "curve.png", title=f"GLUE dev (held out) by labelled rows, {seeds} seed(s)"
    )
    log.info(curve_table(results, budget, seeds, command))
    log.info(f"glue: wrote {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}")
    return results


def workdir_names(srcs) -> dict[str, str]:
    """source -> the folder its runs go in under OUT: `scratch`, else the last part of its
    path (a second source of that name gets -2, ...; `rows` is taken)."""
    names, taken = {}, {"rows"}
    for s in srcs:
        base = (
            s
            if s == SCRATCH
            else Path(s.partition(":")[2] if s.startswith(("hf:", "peft:")) else s).name
        )
        base = base.replace("@", "-") or "source"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        names[s] = name
        taken.add(name)
    return names


def curve_table(results: dict, budget: dict, seeds: int, command: str = "") -> str:
    """curve.md: one row per (task, source), one column per N (mean ± std)."""
    sizes = sorted(
        {int(n) for by_task in results.values() for by_n in by_task.values() for n in by_n}
    )
    lines = [
        f"Label efficiency: each source fine-tuned on the first N rows of a seeded permutation "
        f"of each task's training rows (seed S: the same rows for every source, in "
        f"rows/TASK/seedS/nN.tsv), mean ± std over {seeds} seed(s), on the held-out 10% of "
        "each task's training file.",
        "",
    ]
    if command:
        lines += ["    " + command, ""]
    lines += [
        "| task | metric | source | "
        + " | ".join(f"N={n}" for n in sizes)
        + " | steps x batch x seq_len, lr |",
        "|---|---|---|" + "---:|" * len(sizes) + "---|",
    ]
    tasks = list(dict.fromkeys(t for by_task in results.values() for t in by_task))
    for task in tasks:
        for source, by_task in results.items():
            by_n = by_task.get(task, {})
            cells = []
            for n in sizes:
                s = by_n.get(str(n))
                cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "")
            lines.append(
                f"| {task} | {METRICS[task][0]} | {source} | "
                + " | ".join(cells)
                + f" | {budget.get((source, task), '')} |"
            )
    return "\n".join(lines) + "\n"


def curve_chart(results: dict, path, title: str = "") -> Path:
    """One panel per task, one line per source: the mean against N (log scale), the std
    as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(t for by_task in results.values() for t in by_task))
    fig = Figure(figsize=(4.2 * len(tasks) + 0.6, 3.8 + 0.15 * len(results)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for i, (source, by_task) in enumerate(results.items()):
            by_n = sorted(((int(n), s) for n, s in by_task.get(task, {}).items()))
            if not by_n:
                continue
            x, y, err = zip(*((n, s["mean"], s["std"]) for n, s in by_n))
            ax.errorbar(x, y, yerr=err, color=f"C{i % 10}", marker="o", capsize=4,
                        label=legend_label(source))  # fmt: skip
        ax.set_xscale("log")
        sizes = sorted({int(n) for by_task in results.values() for n in by_task.get(task, {})})
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("labelled rows (N)")
        ax.set_ylabel(METRICS[task][0])
        ax.set_title(task)
        ax.grid(alpha=0.3, which="both")
    # One legend for every panel, under them: long source names never cover a curve.
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(len(labels), 2 if max(map(len, labels), default=0) <= 30 else 1)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    rows = -(-len(labels) // max(ncol, 1))
    fig.tight_layout(rect=(0, 0.07 * rows + 0.02, 1, 1))
    fig.savefig(path)
    return Path(path)


def legend_label(source: str) -> str:
    """A source as a legend names it: a local folder by its last part (two when the last
    says nothing, e.g. .../all-MiniLM-L6-v2/model); anything else (`scratch`, a Hub id)
    as it is."""
    kind, _, rest = (
        source.partition(":") if source.startswith(("hf:", "peft:")) else ("", "", source)
    )
    path = Path(rest)
    if source == SCRATCH or not path.exists():
        return source
    parts = path.resolve().parts
    name = "/".join(parts[-2:]) if parts[-1] in ("model", "checkpoints", "run") else parts[-1]
    return f"{kind}:{name}" if kind else name
