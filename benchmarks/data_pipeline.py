"""The data path at scale: WikiText-2 repeated K times, streamed and prepared.

    python benchmarks/data_pipeline.py [--ks 1,8,32] [--steps 1000] [--work /tmp/pjx_data_bench]

Needs a local WikiText-2 (`$PJX_DATA/wikitext2/train.txt.gz`, PJX_DATA defaults to
../shared/data); the K-times corpora (K plain-text files) and a SentencePiece tokenizer
trained once on WikiText-2 (8192 pieces, BERT specials) go under --work. Every measurement
is one `pjx` command in a subprocess (printed with its result): `pjx bench --data-only
--config configs/bert_mlm.py` (batch 128 x 128 tokens) in streaming mode at each K with 0
(threads in the main process), 1 and 2 Grain workers (--steps batches after the first:
well past the first shuffle window, so tokenization is timed), `pjx data prepare` of
K=8 with 1 and 2 workers, and `pjx bench --data-only` on the prepared folder. Peak RSS is
the process tree's (main process + workers), sampled every 50 ms. Prints one JSON object
last.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PJX_DATA", os.path.join(ROOT, "..", "shared", "data"))
CONFIG = os.path.join(ROOT, "configs", "bert_mlm.py")


def run(cmd: list[str]) -> tuple[dict, float, float]:
    """(last JSON line, wall seconds, peak RSS MiB of the process tree)."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            tree = [proc] + proc.children(recursive=True)
            peak = max(peak, sum(q.memory_info().rss for q in tree if q.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    line = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(line), file=sys.stderr, flush=True)
    return line, wall, peak / 2**20


def corpus(work: str, k: int) -> str:
    folder = os.path.join(work, f"wikitext2_x{k}")
    if not os.path.isdir(folder):
        with gzip.open(os.path.join(DATA, "wikitext2", "train.txt.gz"), "rb") as f:
            text = f.read()
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for i in range(k):
            with open(os.path.join(tmp, f"part-{i:03d}.txt"), "wb") as f:
                f.write(text)
        os.rename(tmp, folder)
    return folder


def tokenizer(work: str) -> str:
    folder = os.path.join(work, "spm8192")
    if not os.path.isdir(folder):
        src = f"text:{os.path.join(DATA, 'wikitext2', 'train.txt.gz')}"
        cmd = [sys.executable, "-m", "pjx.cli", "tokenizer", "train", "--source", src]
        cmd += ["--vocab-size", "8192", "--family", "bert", "--out", folder]
        subprocess.run(cmd, check=True, capture_output=True)
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--prepare-k", type=int, default=8)
    ap.add_argument("--work", default="/tmp/pjx_data_bench")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    tok = tokenizer(args.work)
    pjx = [sys.executable, "-m", "pjx.cli"]
    common = ["--config", CONFIG, f"--config.data.tokenizer={tok}"]
    bench = pjx + ["bench", "--data-only", "--steps", str(args.steps)] + common
    results = {"stream": {}, "prepare": {}, "prepared": {}}
    for k in [int(x) for x in args.ks.split(",")]:
        folder = corpus(args.work, k)
        src = [f"--config.data.source=text:{folder}/*.txt", "--config.data.mode=stream"]
        mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
        for workers in (0, 1, 2):
            r, wall, rss = run(bench + src + [f"--config.data.workers={workers}"])
            results["stream"][f"K={k},workers={workers}"] = dict(
                corpus_mib=round(mb, 1),
                peak_rss_mib=round(rss),
                first_batch_s=round(r["cache_s"] + r["first_batch_s"], 2),
                tokens_per_s=round(r["tokens_per_s"]),
                real_tokens_per_s=round(r["real_tokens_per_s"]),
                wall_s=round(wall, 1),
            )
    folder = corpus(args.work, args.prepare_k)
    for workers in (1, 2):
        out = os.path.join(args.work, f"prepared_w{workers}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = pjx + ["data", "prepare"] + common + [f"--config.data.source=text:{folder}/*.txt"]
        r, wall, rss = run(cmd + ["--out", out, "--workers", str(workers)])
        results["prepare"][f"workers={workers}"] = dict(
            K=args.prepare_k,
            seconds=round(r["seconds"], 2),
            tokens_per_s=round(r["tokens_per_s"]),
            cpu_s=round(r["cpu_s"], 1),
            rows=r["rows"],
            wall_s=round(wall, 1),
            peak_rss_mib=round(rss),
        )
    same = all(
        open(os.path.join(args.work, "prepared_w1", f), "rb").read()
        == open(os.path.join(args.work, "prepared_w2", f), "rb").read()
        for f in os.listdir(os.path.join(args.work, "prepared_w1"))
        if f.endswith(".array_record") or f == "index.json"
    )
    results["prepare"]["identical_bytes"] = same
    w = results["prepare"]
    w["speedup_2_vs_1"] = round(w["workers=1"]["seconds"] / w["workers=2"]["seconds"], 2)
    out = os.path.join(args.work, "prepared_w1")
    r, wall, rss = run(
        pjx
        + ["bench", "--data-only", "--steps", str(args.steps * 2), "--config", CONFIG]
        + [f"--config.data.source=prepared:{out}", f"--config.data.tokenizer={out}/tokenizer"]
    )
    results["prepared"] = dict(
        tokens_per_s=round(r["tokens_per_s"]),
        first_batch_s=round(r["cache_s"] + r["first_batch_s"], 2),
        peak_rss_mib=round(rss),
    )
    results["cpus"] = os.cpu_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
