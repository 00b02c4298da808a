"""The one-run privacy audit (pjx.audit): with the real mechanism its empirical lower
bound stays below the claimed epsilon; with the noise switched off, or a canary that
clipping would have cut (clipping skipped), it exceeds it."""

from __future__ import annotations

import jax
import pytest
from test_privacy_run import _config

from pjx import audit

# delta far below 1 / canaries: the one-run bound pays 2 * canaries * delta in its p-value.
STEPS = dict(steps=60, **{"dp.noise_multiplier": 2.0, "dp.delta": 1e-6})


def _audit(tmp_path, **mechanism):
    return audit.audit(
        _config(**STEPS), str(tmp_path), canaries=1000, devices=jax.devices()[:1],
        mechanism=mechanism,
    )  # fmt: skip


@pytest.mark.parametrize(
    "broken", [dict(noise_multiplier=0.0), dict(value=20 * 0.5)], ids=["no-noise", "no-clip"]
)
def test_the_audit_catches_a_broken_mechanism(tmp_path, broken):
    r = _audit(tmp_path, **broken)
    assert r["epsilon"] < 1.5 and r["canaries"] == 1000
    assert r["epsilon_lower_bound"] > r["epsilon"], r


def test_the_audit_stays_below_the_claim_for_the_real_mechanism(tmp_path):
    r = _audit(tmp_path)
    assert r["epsilon_lower_bound"] <= r["epsilon"], r
    assert 0.3 < r["auroc"] < 0.7  # the canaries are not told apart
