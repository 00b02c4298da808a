"""Replays after a resume: the steps that ran after the checkpoint a private run resumes
from, and were logged, run again only as they ran (the same mechanism, settings and data),
never with other noise. Two releases of one step with different noise would let a
comparison cancel it.
"""

from __future__ import annotations

from pjx.privacy import accounting

# Settings that do not change what a step computes (how often a run logs, evaluates and
# saves; where caches live; how the batch is split over devices): a replayed step may
# differ in them. The dp block is compared as mechanism segments (`check_replay`).
REPLAY_FREE = {
    "": ("best_metric", "best_mode", "checkpoint_every", "compare", "dp", "eval_batch_size",
         "eval_data", "eval_every", "eval_steps", "keep_checkpoints", "log_every", "mesh",
         "profile", "progress", "stages", "wandb", "watchdog", "write_curves"),
    "data": ("cache", "cache_dir", "data_dir", "num_threads", "prefetch", "worker_count",
             "workers", "chunk_bytes"),
}  # fmt: skip


def replayed_settings(config: dict) -> dict:
    """The resolved config's settings a replayed step must share (REPLAY_FREE left out),
    with the data's fingerprint."""
    out = {k: v for k, v in config.items() if k not in REPLAY_FREE[""]}
    out["data"] = {k: v for k, v in (config.get("data") or {}).items()
                   if k not in REPLAY_FREE["data"]}  # fmt: skip
    out["data_fingerprint"] = (config.get("dp") or {}).get("data_fingerprint", "")
    return out


def check_replay(
    previous, plan, start: int, released: int, *, before: dict | None = None,
    now: dict | None = None,
) -> None:  # fmt: skip
    """Steps start+1 .. `released` ran after the checkpoint this start resumes from, and
    their outputs were released (metrics lines): running them again must replay them, with
    the mechanism they ran with (`previous`: the last start's segments), hence the same
    noise, and with the same settings and data (`before` / `now`: the last start's resolved
    config and this one's; `plan`: this start's pjx.privacy.Plan). Anything else would
    release them twice, with noise that a comparison of the two releases cancels."""
    if released <= start or not previous:
        return
    if before and now:
        a, b = replayed_settings(before), replayed_settings(now)
        if not a["data_fingerprint"]:  # a config.json from before fingerprints were kept
            b["data_fingerprint"] = ""
        changed = sorted(_changed(a, b))
        if changed:
            raise ValueError(
                f"steps {start + 1}..{released} ran after the checkpoint at step {start} and "
                f"were logged; this start would run them again with other settings "
                f"({', '.join(changed)}) and the same noise, releasing them twice: the "
                "difference is noise-free. Resume with the settings they ran with "
                "(WORKDIR/config.json), or use a new --workdir."
            )
    old = [accounting.Segment(**x) if isinstance(x, dict) else x for x in previous]
    for step in range(start + 1, released + 1):
        a, b = _segment_at(old, step), _segment_at(plan.segments, step)
        if a is not None and (b is None or not a.same_mechanism(b)):
            raise ValueError(
                f"steps {start + 1}..{released} ran after the checkpoint at step {start} and "
                f"were logged, with noise multiplier {a.noise_multiplier:.4g}, clip "
                f"{a.l2_norm_clip:g} and sampling rate {a.sampling_rate:.4g}; this start "
                "would run them again with other settings and release them twice. Resume "
                "with the settings they ran with (WORKDIR/config.json), or use a new --workdir."
            )


def _changed(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def _segment_at(segments, step: int):
    """The segment that ran step `step` (1-based), or None past the last."""
    end = 0
    for s in segments:
        end += s.steps
        if step <= end:
            return s
    return None
