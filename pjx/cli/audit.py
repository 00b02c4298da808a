"""`pjx audit --config FILE[:ARG] [--config.key=value ...] [--canaries M]
[--canary-kind dirac|example] [--workdir DIR]`: trains a DP-SGD config once with canaries
(pjx.privacy.audit: Steinke, Nasr and Jagielski 2023) and prints, as its last line, one JSON
object: `epsilon` (claimed), `epsilon_lower_bound` (empirical, 95% confidence),
`epsilon_ceiling` (the most a perfect attack could show with these canaries), `verdict`
("violation": the bound exceeds the claim; "consistent": it does not; "inconclusive":
the ceiling is at or below the claim, so nothing could have been shown), `canaries`.

    pjx audit --config configs/glue.py:sst2,dp,smoke --config.steps=50
"""

from __future__ import annotations

import json
import tempfile

from pjx.cli.common import add_config_argument, start_compute


def add_arguments(p):
    add_config_argument(p)
    p.add_argument(
        "--canaries",
        type=int,
        help="canaries (default: the fewest of 1e3, 1e4, 1e5, 1e6 whose ceiling exceeds "
        "the claimed epsilon, at most the largest trained parameter's size)",
    )
    p.add_argument(
        "--canary-kind",
        choices=("dirac", "example"),
        default="dirac",
        help="dirac: gradients added after clipping (tests the noise); example: clipped "
        "per example by the run's clipping (also tests clipping). Default dirac",
    )
    p.add_argument("--workdir", help="where the audited run writes (default: a temporary dir)")


def main(args, overrides) -> int:
    from pjx import config as config_lib
    from pjx.privacy import audit

    config = config_lib.first_stage(config_lib.load(args.config, overrides))
    start_compute(args)
    with tempfile.TemporaryDirectory(prefix="pjx_audit_") as tmp:
        result = audit.audit(
            config, args.workdir or tmp, canaries=args.canaries, kind=args.canary_kind
        )
    print(
        f"claimed epsilon {result['epsilon']:.4g}; empirical lower bound "
        f"{result['epsilon_lower_bound']:.4g} at {100 * result['confidence']:.0f}% confidence "
        f"from {result['canaries']} {result['canary_kind']} canaries (ceiling "
        f"{result['epsilon_ceiling']:.4g}): {result['verdict']}",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return 0
