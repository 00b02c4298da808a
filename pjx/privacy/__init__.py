"""DP-SGD's host side: the checks a private run must pass, its plan and ledger, accounting.

The mechanism (per-example clipping, noise) is pjx.grads; this module decides its noise
and says what it buys. The privacy unit is one row of the task's training table (a
sentence, a pair, an image; for language-model tasks one document, which `data.pack=none`
keeps to one row). Batches are Poisson samples (each row in each step with probability
q = batch_size / N), padded to a fixed shape so the jitted step sees static shapes and
truncated in the rare step that draws more; `dp.sampling="shuffle"` uses shuffled
fixed-size batches instead, and every epsilon then reported assumes Poisson sampling
(each metrics line says so).

A run's privacy is a `Plan`: the segments of steps it runs with one (q, sigma), after the
segments its checkpoint says already ran (the ledger), fixed once per start by `plan`.
A resume composes what ran with what remains; with `dp.target_epsilon` only the remaining
steps are calibrated, so the total stays at the target; whatever would make the record
untrue (another data set, another sampling) is refused.

Accounting (pjx.privacy.accounting) is dp_accounting's, PLD or RDP (`dp.accountant`): one
accountant per run, for the plan and every line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets

from pjx import grads
from pjx.privacy import accounting

# `config.dp` and its defaults (pjx.config holds it as a ConfigDict). DP is on when
# noise_multiplier > 0, or target_epsilon > 0 (sigma is then calibrated before training).
DEFAULTS = dict(
    noise_multiplier=0.0,  # sigma: noise std / clip norm
    target_epsilon=0.0,  # > 0: calibrate sigma to reach this epsilon after `steps`
    l2_norm_clip=1.0,  # C: per-example gradient clip norm
    delta=0.0,  # 0 = 1 / (10 N): below 1/N, as a meaningful delta must be
    sampling="poisson",  # "poisson" | "shuffle" (epsilon then assumes Poisson)
    accountant="pld",  # "pld" | "rdp" (dp_accounting)
    microbatch_size=0,  # examples per vmap when computing per-example gradients; 0 = all
    clipping="auto",  # "ghost" | "vmap" | "auto": ghost unless nn.scan / remat (see below)
    # A vocabulary trained on the private training text leaks which words occur in it
    # (outside epsilon): refused unless set (use init_from's or a file's tokenizer).
    private_tokenizer=False,
)
SAMPLINGS = ("poisson", "shuffle")
ACCOUNTANTS = ("pld", "rdp")
# Padded Poisson batches: mean + this many standard deviations.
MARGIN_SIGMAS = 6.0


def enabled(dp_cfg) -> bool:
    return bool(dp_cfg) and (
        float(dp_cfg.get("noise_multiplier") or 0) > 0
        or float(dp_cfg.get("target_epsilon") or 0) > 0
    )


def check(dp_cfg) -> None:
    """Raises ValueError for a DP setting that cannot work, saying which and why."""
    if dp_cfg.get("sampling") not in SAMPLINGS:
        raise ValueError(f"dp.sampling={dp_cfg.get('sampling')!r}: choose one of {SAMPLINGS}")
    if dp_cfg.get("accountant") not in ACCOUNTANTS:
        raise ValueError(f"dp.accountant={dp_cfg.get('accountant')!r}: one of {ACCOUNTANTS}")
    if dp_cfg.get("clipping", "auto") not in ("auto", *grads.CLIPPING):
        raise ValueError(f"dp.clipping={dp_cfg.get('clipping')!r}: one of auto, {grads.CLIPPING}")
    if not float(dp_cfg.get("l2_norm_clip") or 0) > 0:
        raise ValueError("dp.l2_norm_clip must be > 0 (the per-example clip norm C)")
    if float(dp_cfg.get("noise_multiplier") or 0) > 0 and float(dp_cfg.target_epsilon or 0) > 0:
        raise ValueError(
            "set dp.noise_multiplier or dp.target_epsilon, not both (a target epsilon "
            "calibrates the noise multiplier)"
        )


def clipping_method(dp_cfg, model_cfg) -> str:
    """How per-example norms are found: "ghost" (pjx.ghost_clipping) unless the layers
    run inside nn.scan / nn.remat, whose activations cannot leave the transform."""
    chosen = dp_cfg.get("clipping") or "auto"
    lifted = bool(model_cfg.get("scan_layers")) or (model_cfg.get("remat") or "none") != "none"
    if chosen == "auto":
        return "vmap" if lifted else "ghost"
    if chosen == "ghost" and lifted:
        raise ValueError(
            "dp.clipping='ghost' cannot see layers inside model.scan_layers / model.remat; "
            "use dp.clipping='vmap' (or 'auto') with them"
        )
    return chosen


# ------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class Plan:
    """The privacy of one run: what ran before this start (from its checkpoint) and what
    this start runs, as segments; fixed before the start's first step."""

    segments: tuple[accounting.Segment, ...]
    delta: float
    sampling: str
    accountant: str
    epsilon: float  # after the last segment
    calibrated: bool  # the last segment's sigma came from dp.target_epsilon
    # Steps of the `init_from` run that trained on this run's rows: composed into every
    # epsilon, not counted in this run's steps.
    inherited: tuple[accounting.Segment, ...] = ()

    @property
    def current(self) -> accounting.Segment:
        return self.segments[-1]

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.segments)

    def ledger(self, upto: int) -> list[accounting.Segment]:
        """The segments of the first `upto` steps."""
        out, left = [], int(upto)
        for s in self.segments:
            if left <= 0:
                break
            out.append(dataclasses.replace(s, steps=min(s.steps, left)))
            left -= s.steps
        return out

    def record(self, upto: int) -> dict:
        """What a checkpoint at step `upto` keeps: the ledger `plan` resumes from."""
        segments = [dataclasses.asdict(s) for s in self.ledger(upto)]
        inherited = [dataclasses.asdict(s) for s in self.inherited]
        return {"sampling": self.sampling, "segments": segments, "inherited": inherited}

    def epsilon_at(self, step: int) -> float:
        return accounting.compose(
            [*self.inherited, *self.ledger(step)], self.delta, self.accountant
        )

    def to_dict(self) -> dict:
        s = self.current
        return dict(
            epsilon=self.epsilon,
            delta=self.delta,
            noise_multiplier=s.noise_multiplier,
            l2_norm_clip=s.l2_norm_clip,
            steps=self.steps,
            sampling_rate=s.sampling_rate,
            num_examples=s.num_examples,
            padded_batch_size=s.padded_batch_size,
            sampling=self.sampling,
            accountant=self.accountant,
            calibrated=self.calibrated,
            segments=[dataclasses.asdict(x) for x in self.segments],
            inherited=[dataclasses.asdict(x) for x in self.inherited],
        )

    def describe(self) -> str:
        s = self.current
        how = "calibrated to" if self.calibrated else "gives"
        resumed = ""
        if len(self.segments) > 1:
            ran = sum(x.steps for x in self.segments[:-1])
            resumed = f" (with the {ran} steps that ran: {len(self.segments) - 1} segment(s))"
        if self.inherited:
            resumed += (
                f" (with the {sum(x.steps for x in self.inherited)} private steps of init_from's "
                "run on these rows)"
            )
        text = (
            f"DP-SGD: noise multiplier {s.noise_multiplier:.4g} {how} epsilon "
            f"{self.epsilon:.4g} at delta {self.delta:.3g} after {self.steps} steps{resumed} "
            f"(clip {s.l2_norm_clip:g}, {self.sampling} sampling rate q = "
            f"{s.sampling_rate:.4g} of {s.num_examples} rows, batches padded to "
            f"{s.padded_batch_size}, {self.accountant.upper()} accountant)"
        )
        if self.sampling == "shuffle":
            text += (
                "; batches are shuffled fixed-size batches, and this epsilon assumes Poisson "
                "sampling, which they are not: it is not a proven guarantee for this run"
            )
        return text


def padded_batch(batch_size: int, num_examples: int, sampling: str, multiple: int = 1) -> int:
    """Rows a batch is padded (and truncated) to: mean + MARGIN_SIGMAS standard deviations
    of the Poisson batch size, rounded up to `multiple`, at most N (rounded up)."""
    B, N = int(batch_size), int(num_examples)
    if sampling != "poisson":
        return B
    q = B / N
    padded = int(math.ceil(B + MARGIN_SIGMAS * math.sqrt(B * (1 - q))))
    round_up = lambda n: int(math.ceil(n / multiple) * multiple)
    return min(round_up(padded), round_up(N))


def plan(
    dp_cfg, *, num_examples: int, batch_size: int, steps: int, multiple: int = 1, ledger=None,
    inherited=(),
) -> Plan:  # fmt: skip
    """The run's Plan after `ledger` (what its checkpoint recorded, `Plan.record`; None on
    a fresh start): delta, sampling rate, padded batch, sigma for the remaining steps (calibrated
    so that the whole run meets dp.target_epsilon when given) and the epsilon reached.
    `inherited`: the segments of an `init_from` run on these rows (a fresh start's; a resume
    keeps the ones its ledger recorded), composed before this run's."""
    check(dp_cfg)
    N, B = int(num_examples), int(batch_size)
    if B > N:
        raise ValueError(f"batch_size {B} is larger than the {N} training examples")
    delta = float(dp_cfg.get("delta") or 0) or 1.0 / (10 * N)
    if delta >= 1.0 / N:
        raise ValueError(
            f"dp.delta={delta:g} is not below 1/N = {1 / N:.3g} (N = {N} examples): a delta "
            "that large allows leaking an example outright; use e.g. 1/(10 N)"
        )
    accountant, sampling = dp_cfg.get("accountant", "pld"), dp_cfg.get("sampling", "poisson")
    target = float(dp_cfg.get("target_epsilon") or 0)
    clip = float(dp_cfg.l2_norm_clip)
    ledger = ledger or {}
    prior = tuple(accounting.Segment(**s) for s in ledger.get("segments", ()))
    if "inherited" in ledger:
        inherited = ledger["inherited"]
    inherited = tuple(s if isinstance(s, accounting.Segment) else accounting.Segment(**s)
                      for s in inherited)  # fmt: skip
    _check_resume(prior, N, clip, target > 0)
    if prior and ledger.get("sampling") != sampling:
        raise ValueError(
            f"dp.sampling changed from {ledger.get('sampling')!r} to {sampling!r} since the "
            "checkpoint: the steps that ran were accounted for the other sampling. Use a "
            "new --workdir."
        )
    remaining = max(int(steps) - sum(s.steps for s in prior), 0)
    padded = padded_batch(B, N, sampling, multiple)
    make = lambda sigma: accounting.Segment(remaining, float(sigma), B / N, N, padded, clip)
    keep = prior[-1].noise_multiplier if prior else 0.0
    calibrate = target > 0 and remaining
    before = (*inherited, *prior)
    if calibrate and keep and _meets(target, delta, _join(before, make(keep)), accountant):
        sigma = keep  # an unchanged resume runs on with the noise it ran with
    elif calibrate:
        sigma = accounting.calibrate(target, delta, make, before, accountant)
    else:
        sigma = float(dp_cfg.get("noise_multiplier") or 0) or (
            prior[-1].noise_multiplier if prior else 0.0
        )
    if accountant == "rdp":  # pad until truncated batches fit in half of delta
        while True:
            try:
                accounting.compose([*before, make(sigma)], delta, accountant)
                break
            except accounting.TruncationTooLikely:
                padded = min(padded + multiple, int(math.ceil(N / multiple)) * multiple)
    segments = _join(prior, make(sigma))
    return Plan(
        segments=tuple(segments),
        delta=delta,
        sampling=sampling,
        accountant=accountant,
        epsilon=accounting.compose([*inherited, *segments], delta, accountant),
        calibrated=target > 0,
        inherited=inherited,
    )


def _join(prior, new) -> list:
    """`prior` followed by `new` (merged into the last segment when it is the same
    mechanism; left out when it has no steps, unless there is nothing else)."""
    segments = list(prior)
    if segments and segments[-1].same_mechanism(new):
        segments[-1] = dataclasses.replace(new, steps=segments[-1].steps + new.steps)
    elif new.steps or not segments:
        segments.append(new)
    return segments


def _meets(target, delta, segments, accountant) -> bool:
    try:
        return accounting.compose(segments, delta, accountant) <= target
    except accounting.TruncationTooLikely:
        return False


def inherit(
    source: str, source_data: str | None, shared: int, ledger: dict | None, data: str,
    key: str = "init_from",
):  # fmt: skip
    """What a private run inherits from `source`, the run it starts from (`key` init_from)
    or learns from (distill.teacher): (segments, a line saying why). Its steps count when it
    trained on this run's rows (`shared` of them, from `source_data`): composed when they
    were private (`ledger`: its checkpoint's), refused when they were not. A model pjx
    cannot see the data of (no `source_data`: a Hugging Face folder, an adapter) is taken
    as public."""
    if source_data is None:
        return (), (
            f"DP-SGD: {key} {source} keeps no record of its training data: epsilon covers "
            f"{data} only if that model never trained on these rows (a public model)"
        )
    if not shared:
        return (), (
            f"DP-SGD: {key} {source} trained on {source_data}, which shares no rows with "
            f"{data}: nothing to compose"
        )
    if ledger is None:
        raise ValueError(
            f"{key}={source} trained without DP-SGD on {source_data}, which holds {shared} "
            f"of this run's training rows ({data}): those rows are not protected, so no "
            f"epsilon would hold for them. Use a {key} trained on other (public) data, "
            "or on these rows with DP-SGD."
        )
    segments = tuple(
        accounting.Segment(**x) for x in (*ledger.get("inherited", ()), *ledger["segments"])
    )
    ran = sum(x.steps for x in segments)
    return segments, (
        f"DP-SGD: {key} {source} trained privately on {source_data} ({shared} of this "
        f"run's rows): its {ran} steps are composed with this run's"
    )


def _check_resume(prior, N: int, clip: float, calibrated: bool) -> None:
    """Refuses a resume whose record of what ran would become untrue."""
    if not prior:
        return
    ran = sum(s.steps for s in prior)
    if prior[-1].num_examples != N:
        raise ValueError(
            f"the training data changed since the checkpoint: the {ran} steps that ran "
            f"sampled from N = {prior[-1].num_examples} rows, this run has {N}. Epsilon "
            "is per data set: train on the changed data in a new --workdir (init_from the "
            "old run spends its budget again)."
        )
    if calibrated and prior[-1].l2_norm_clip != clip:
        raise ValueError(
            f"dp.l2_norm_clip changed from {prior[-1].l2_norm_clip:g} to {clip:g} since the "
            "checkpoint, with dp.target_epsilon calibrating sigma: keep the clip of the "
            "steps that ran, or use a new --workdir."
        )


class Ledger:
    """Epsilon spent after a given step, for the metrics lines (the plan's segments up to
    that step, composed; after the plan's last step it is the plan's epsilon)."""

    def __init__(self, p: Plan):
        self.plan = p
        self._cache: dict[int, float] = {p.steps: p.epsilon}

    def epsilon(self, step: int) -> float:
        step = int(step)
        if step not in self._cache:
            self._cache[step] = self.plan.epsilon_at(step)
        return self._cache[step]

    def fields(self, step: int) -> dict:
        """What every metrics line of a private run carries."""
        out = {"dp_epsilon": self.epsilon(step)}
        if self.plan.sampling == "shuffle":
            out["dp_epsilon_assumes_poisson"] = True
        return out


# ------------------------------------------------------------------- secret randomness
SECRET_FILE = "dp_secret.json"


def secret(workdir: str) -> int:
    """The run's secret seed (128 bits from the OS's entropy, never from config.seed):
    the DP noise and the Poisson batches come from it, so nobody who knows the config can
    regenerate the noise. Kept in WORKDIR/dp_secret.json (owner-only), created on the
    first start, so that a resumed or re-run step draws the same noise and batches (no
    step is ever released twice with different noise). Process 0's value is every
    process's."""
    import jax
    import numpy as np

    path = os.path.join(workdir, SECRET_FILE)
    value = 0
    if jax.process_index() == 0:
        if os.path.exists(path):
            with open(path) as f:
                value = int(json.load(f)["seed"])
        else:
            value = secrets.randbits(128)
            tmp = f"{path}.tmp{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"seed": str(value)}, f)
            os.replace(tmp, path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        words = np.array([(value >> (32 * i)) & 0xFFFFFFFF for i in range(4)], np.uint32)
        words = np.asarray(multihost_utils.broadcast_one_to_all(words))
        value = sum(int(w) << (32 * i) for i, w in enumerate(words))
    return value
