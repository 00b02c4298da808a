"""`pjx explain RUN --text TEXT`: which tokens made a BERT classifier predict its label
(integrated gradients); the last line is JSON."""

from __future__ import annotations

import json

from pjx.cli.common import no_overrides, start_compute


def add_arguments(parser):
    parser.add_argument("source", metavar="RUN", help="a pjx workdir / checkpoint of a classifier")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", help="a text to explain (repeatable)")
    what.add_argument("--source", dest="data", metavar="URI", help="explain every example of it")
    parser.add_argument("--steps", type=int, default=64, help="integration points (>= 2)")
    parser.add_argument("--out", default=None, help="also write FILE.html or FILE.png")
    parser.add_argument("--top", type=int, default=5, help="tokens shown per text")


def main(args, overrides=()) -> int:
    from pjx import explain

    no_overrides("explain", overrides)
    if args.out:  # a bad --out fails before the model is loaded, not after the work
        explain.check_out(args.out)
    start_compute()
    if args.data:
        ex = explain.source_examples(args.source, args.data)
        results = explain.explain(
            args.source,
            ex.texts,
            args.steps,
            texts_b=ex.texts_b,
            labels=ex.labels,
            label_names=ex.label_names,
        )
    else:
        results = explain.explain(args.source, args.text, args.steps)
    for r in results:
        top = " ".join(f"{t!r}{a:+.3g}" for t, a in explain.top_tokens(r, args.top))
        print(f"{r['label']} (p={r['probability']:.3f}): {top}")
    out = str(explain.save(results, args.out)) if args.out else None
    print(json.dumps({"results": results, "steps": args.steps, "out": out}))
    return 0
