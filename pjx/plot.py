"""Train / eval curves of runs, from their metrics.jsonl.

    pjx.plot.plot(["runs/a", "runs/b"], "curves.png")     # loss + every eval metric
    data = pjx.plot.curves(["runs/a"], metrics=["loss"])  # the exact numbers plotted
    pjx.plot.write_curves("runs/a")                       # runs/a/curves.png

A run is a workdir holding metrics.jsonl; a stage parent (runs/quickstart with
pretrain/ and finetune/ below it) stands for each of its stages. Drawing uses matplotlib's
Agg canvas directly (no pyplot), so it never changes a notebook's backend.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SPLITS = ("train", "eval")
# Eval fields that are bookkeeping, not curves.
NOT_CURVES = ("step", "split", "count")
# One panel is PANEL_INCHES at DPI; a figure of R x C panels is exactly C*W x R*H pixels.
PANEL_INCHES = (5.0, 3.6)
DPI = 100
MAX_COLUMNS = 3
LOG_SCALE = ("perplexity",)
TRAIN_STYLE = dict(linestyle="-")
EVAL_STYLE = dict(
    linestyle="--", marker="o", markersize=4
)  # spans orders of magnitude early in training


def read_metrics(workdir) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl; a line that is not a JSON object with an int
    `step` and a `split` is skipped with a warning (a run killed mid-write leaves one)."""
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a pjx workdir (a run folder)")
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                log.warning(f"{path}:{i}: skipped, not JSON ({e.msg})")
                continue
            if (
                not isinstance(record, dict)
                or not _is_number(record.get("step"))
                or record.get("split") not in SPLITS
            ):
                log.warning(f"{path}:{i}: skipped, not a {{'step', 'split': train|eval}} object")
                continue
            records.append(record)
    return records


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def find_runs(runs) -> dict[str, Path]:
    """{legend name: workdir} for RUN arguments; a stage parent gives one entry per stage
    (name "parent/stage"), in the order the stages ran."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    found: dict[str, Path] = {}
    for run in runs:
        path = Path(run)
        if path.name == METRICS_FILE and path.is_file():  # the file itself names its run
            path = path.parent
        dirs = [path] if (path / METRICS_FILE).is_file() else []
        if path.is_dir():
            stages = [p for p in path.iterdir() if (p / METRICS_FILE).is_file()]
            # Each stage writes its config.json when it starts, and stages run in order.
            dirs += sorted(stages, key=lambda p: (_started(p), p.name))
        if not dirs:
            raise FileNotFoundError(
                f"{run}: no {METRICS_FILE} there (nor in a stage folder below it): "
                "pass the workdir of a run"
            )
        for d in dirs:
            name = path.resolve().name if d == path else f"{path.resolve().name}/{d.name}"
            found[name if name not in found else str(d)] = d
    return found


def _started(stage: Path) -> float:
    for f in ("config.json", METRICS_FILE):
        if (stage / f).is_file():
            return (stage / f).stat().st_mtime
    return 0.0


def default_metrics(records_by_run: dict[str, list[dict]]) -> list[str]:
    """loss, then every eval metric of any run (first seen first), except `count`."""
    out = ["loss"]
    for records in records_by_run.values():
        for r in records:
            if r["split"] != "eval":
                continue
            for k, v in r.items():
                if k not in NOT_CURVES and k not in out and _is_number(v):
                    out.append(k)
    return out


def curves(runs, metrics=None) -> dict:
    """{run: {metric: {split: (steps, values)}}}: exactly what `plot` draws. Steps are in
    increasing order; a metric or split a run lacks is left out."""
    records_by_run = {name: read_metrics(d) for name, d in find_runs(runs).items()}
    return _curves(records_by_run, metrics)


def _curves(records_by_run, metrics) -> dict:
    names = list(metrics) if metrics else default_metrics(records_by_run)
    out = {}
    for run, records in records_by_run.items():
        per_metric = {}
        for m in names:
            per_split = {}
            for split in SPLITS:
                points = [
                    (int(r["step"]), float(r[m]))
                    for r in records
                    if r["split"] == split and _is_number(r.get(m))
                ]
                points.sort(key=lambda p: p[0])  # stable: equal steps keep the file's order
                if points:
                    per_split[split] = ([s for s, _ in points], [v for _, v in points])
            if per_split:
                per_metric[m] = per_split
        out[run] = per_metric
    if metrics:
        absent = [m for m in names if not any(m in per_metric for per_metric in out.values())]
        if absent:
            present = {k for rs in records_by_run.values() for r in rs for k in r}
            present = sorted(present - set(NOT_CURVES))
            raise ValueError(f"no run logs {absent}; --metric is one of {present}")
    return out


def plot(runs, out, metrics=None) -> Path:
    """Draws `curves(runs, metrics)` into `out` (PNG, or PDF / SVG by suffix): one panel
    per metric, one colour per run, train solid, eval dashed with markers."""
    return draw(curves(runs, metrics), out)


def draw(data: dict, out) -> Path:
    """Draws `curves()` output into `out`; see `plot`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = []
    for per_metric in data.values():
        names += [m for m in per_metric if m not in names]
    if not names:
        raise ValueError(f"nothing to plot: the runs {list(data)} log no numeric metric")
    out = Path(out)
    cols = min(len(names), MAX_COLUMNS)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    suffix = out.suffix.lstrip(".").lower()
    if suffix not in canvas.get_supported_filetypes():
        raise ValueError(f"--out {out}: unknown image type {suffix!r}; use .png, .pdf or .svg")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, names):
        for i, (run, per_metric) in enumerate(data.items()):
            for split, (steps, values) in per_metric.get(metric, {}).items():
                style = (
                    dict(linestyle="-") if split == "train" else dict(linestyle="--", marker="o")
                )
                ax.plot(steps, values, color=f"C{i % 10}", label=f"{run} ({split})", **style)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric in LOG_SCALE:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()  # moves panels inside the figure; the pixel size stays fixed
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def write_curves(workdir) -> Path | None:
    """WORKDIR/curves.png for one run; None when it has no metrics.jsonl or nothing to
    plot. Never raises on bad lines (they are skipped with a warning)."""
    if not (Path(workdir) / METRICS_FILE).is_file():
        return None
    data = _curves({Path(workdir).resolve().name: read_metrics(workdir)}, None)
    if not any(data.values()):
        log.warning(f"{workdir}/{METRICS_FILE}: no curve to draw")
        return None
    return draw(data, Path(workdir) / "curves.png")


def write_stages(workdir, stages, compared, metric: str = "accuracy", title: str = "") -> Path:
    """WORKDIR/curves.png for a staged run that compares stages (`config.compare`): the
    compared stages on shared axes, their eval `metric` and eval loss (train loss faint
    behind it), and beside them every other stage's loss (the pretraining the first one
    started from). `stages`: the stage names in run order; `compared`: ((label, stage), ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workdir = Path(workdir)
    names = [str(s) for s in stages]
    shown = [(str(label), str(stage)) for label, stage in compared]
    others = [s for s in names if s not in {stage for _, stage in shown}]
    data = _curves({s: read_metrics(workdir / s) for s in names}, None)
    fig = Figure(figsize=(5.0 * (2 + bool(others)), 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 + bool(others), squeeze=False)[0]
    for i, (label, stage) in enumerate(shown):
        color = f"C{i % 10}"
        steps, values = data[stage].get(metric, {}).get("eval", ([], []))
        axes[0].plot(steps, values, color=color, marker="o", label=label)
        if values:  # the value the comparison line states, at the end of its curve
            axes[0].annotate(
                f"{values[-1]:.3f}", (steps[-1], values[-1]), textcoords="offset points",
                xytext=(6, 0), va="center", color=color, fontsize=9,
            )  # fmt: skip
        for split, style in (("train", dict(alpha=0.35, linewidth=1)), ("eval", EVAL_STYLE)):
            steps, values = data[stage].get("loss", {}).get(split, ([], []))
            axes[1].plot(steps, values, color=color, label=f"{label} ({split})", **style)
    axes[0].set_title(f"fine-tuning: eval {metric}")
    axes[1].set_title("fine-tuning: loss (eval: markers, train: faint)")
    for i, stage in enumerate(others):
        color = f"C{(len(shown) + i) % 10}"
        for split, style in (("train", TRAIN_STYLE), ("eval", EVAL_STYLE)):
            steps, values = data[stage].get("loss", {}).get(split, ([], []))
            axes[2].plot(steps, values, color=color, label=f"{stage} ({split})", **style)
    if others:
        tasks = [_task(workdir / s) for s in others]
        axes[2].set_title(
            ", ".join(f"{s} ({t})" if t else s for s, t in zip(others, tasks)) + ": loss"
        )
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].margins(x=0.2)  # room for the final values
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = workdir / "curves.png"
    fig.savefig(out, dpi=DPI)
    return out


def _task(stage: Path) -> str:
    """The task a stage ran (its config.json's), '' when unknown."""
    try:
        return str(json.loads((stage / "config.json").read_text()).get("task") or "")
    except (OSError, ValueError):
        return ""
