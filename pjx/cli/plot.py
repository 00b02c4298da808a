"""`pjx plot RUN [RUN ...] --out curves.png`: train / eval curves of runs, overlaid."""

from __future__ import annotations

from pjx.cli.common import no_overrides


def add_arguments(parser):
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="pjx workdirs (a stage parent plots each stage)"
    )
    parser.add_argument("--out", default="curves.png", help="image to write (.png, .pdf, .svg)")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="a metric to plot (repeatable; default: loss and every eval metric)",
    )


def main(args, overrides=()) -> int:
    from pjx import plot

    no_overrides("plot", overrides)
    data = plot.curves(args.runs, args.metric)
    out = plot.draw(data, args.out)
    metrics = list(dict.fromkeys(m for per_metric in data.values() for m in per_metric))
    print(f"wrote {out}: {', '.join(metrics)} for {', '.join(data)}")
    return 0
