"""`pjx data prepare --config FILE[:ARG] [--config.key=value ...] --out DIR [--workers N]
[--runner NAME [BEAM_OPTION ...]]`.

Tokenizes and packs the config's training source (`config.data.source`: text:, jsonl:,
parquet: files) once into DIR: sharded ArrayRecord rows + index.json + the tokenizer
(pjx.data.prepared), on a pool of N processes, or with `--runner` on Apache Beam (the
rest of the line is Beam's pipeline options, e.g. `--runner DirectRunner
--direct_running_mode=multi_processing --direct_num_workers=8`, or DataflowRunner with
its --project, --region, --temp_location); the output is the same bytes either way.
Train on it with `--config.data.source=prepared:DIR --config.data.tokenizer=DIR/tokenizer`.
The last line is one JSON object (rows, shards, seconds, tokens_per_s, cpu_s). Killed
part-way, the same command finishes the shards that are missing (the same bytes).

`pjx data verify DIR` checks every shard's size and SHA-256 against DIR/index.json: exit 0
when all match, 1 naming those that do not, 2 when DIR is not prepared data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time


def add_arguments(p):
    sub = p.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="tokenize + pack a corpus into ArrayRecord shards")
    prep.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    prep.add_argument("--out", required=True, help="folder to write (must not hold data yet)")
    prep.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    prep.add_argument(
        "--chunks-per-shard",
        type=int,
        default=0,
        help="chunks per shard file (0: 1, <=1024 shards)",
    )
    prep.add_argument(
        "--runner",
        nargs=argparse.REMAINDER,
        metavar="NAME [BEAM_OPTION ...]",
        help="last: prepare on Apache Beam with runner NAME (DirectRunner, DataflowRunner, "
        "...) and these pipeline options; needs apache-beam (pip install 'pjx[beam]')",
    )
    check = sub.add_parser("verify", help="check every shard of prepared data (size, SHA-256)")
    check.add_argument("folder", help="a folder written by pjx data prepare")


def verify(folder: str) -> int:
    """0: every shard matches index.json; 1: the shards that do not, named."""
    from pjx.data import prepared

    problems = prepared.verify(folder)
    index = prepared.load_index(folder)
    if problems:
        for p in problems:
            print(f"{folder}: {p}", file=sys.stderr)
        print(
            f"{folder}: {len(problems)} of {len(index['shards'])} shards do not match index.json; "
            "prepare the data again (pjx data prepare --config ... --out NEW_FOLDER)",
            file=sys.stderr,
        )
        return 1
    print(f"{folder}: {len(index['shards'])} shards, {index['rows']} rows: every checksum matches")
    return 0


def main(args, overrides) -> int:
    if args.action == "verify":
        return verify(args.folder)
    from pjx import config as config_lib
    from pjx import data, resolution
    from pjx import workdir as workdir_lib
    from pjx.data import prepared

    if args.runner == []:  # `--runner` with nothing after it
        raise ValueError("pjx data prepare --runner NAME: name a Beam runner, e.g. DirectRunner")
    config = config_lib.first_stage(config_lib.load(args.config, overrides))
    config = resolution.resolve_data(config)
    cfg = data.with_defaults(config.data)
    out = os.path.abspath(os.path.expanduser(args.out))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = workdir_lib.build_tokenizer(config, scratch)
        t0 = time.perf_counter()
        index = prepared.prepare(
            cfg,
            task=config.task,
            task_args=config.task_args.to_dict(),
            tokenizer=tokenizer,
            out=out,
            workers=max(int(args.workers), 1),
            seed=int(config.seed),
            chunks_per_shard=int(args.chunks_per_shard),
            runner=args.runner or (),
        )
        dt = time.perf_counter() - t0
    cpu = sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    L = index["columns"].get("input_ids", {}).get("shape", [0])[-1]
    result = dict(
        out=out,
        rows=index["rows"],
        shards=len(index["shards"]),
        chunks=index["chunks"],
        skipped=index["skipped"],
        workers=int(args.workers),
        runner=args.runner[0] if args.runner else "",
        seconds=dt,
        tokens_per_s=index["rows"] * L / dt if dt > 0 else 0.0,
        cpu_s=cpu,  # this command's processes, start-up included
    )
    print(
        f"prepared {index['source']} into {out}: {index['rows']} rows in "
        f"{len(index['shards'])} shards ({dt:.1f}s); train with "
        f"--config.data.source=prepared:{out} --config.data.tokenizer={out}/tokenizer",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return 0
