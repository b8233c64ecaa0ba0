"""Training health: non-finite losses, a discriminator that wins outright, a generator that collapses.

All of it is read from the per-step scalars the loop flushes anyway, so it costs no extra host sync.
Events go to ``metrics/health.parquet`` (step, event, detail, action, lr_scale, time).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ganlib.errors import HealthStop
from ganlib.runs.paths import RunDir

log = logging.getLogger("ganlib")

# What train_step returns, in order; r_t: the overfitting signal, ada_p: the ADA probability (0 without ADA).
METRIC_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake", "fake_std", "r_t", "ada_p")
SATURATION = 0.99  # D(x) above and D(G(z)) below 1 - this, averaged over a flush: D wins outright
COLLAPSE_FRACTION = 0.1  # sample spread below this fraction of its best so far: G collapsed


class NonFiniteLoss(Exception):
    """Internal: a flushed loss was NaN or infinite (carries the step and the health state)."""

    def __init__(self, message: str, step: int, health: dict[str, Any]):
        super().__init__(message)
        self.step, self.health = step, health


def record_health_event(run: RunDir, step: int, event: str, detail: str, action: str, lr_scale: float) -> None:
    """Append a row to ``metrics/health.parquet`` (step, event, detail, action, lr_scale, time)."""
    rows = run.read_health_rows()
    rows.append({"step": step, "event": event, "detail": detail, "action": action, "lr_scale": lr_scale,
                 "time": time.time()})
    run.write_health_rows(rows)


class HealthMonitor:
    """Notices a failing GAN from the flushed per-step scalars, without extra host syncs.

    - ``d-saturation``: mean D(x) > 0.99 and mean D(G(z)) < 0.01 over a flush;
    - ``mode-collapse``: the generated batch's spread (mean per-pixel std) falls below 10% of the
      best seen so far.
    Each is recorded in ``metrics/health.parquet`` once ``window`` consecutive flushes show it (and
    again only after it has cleared). Its counters live in the run's health state, saved with
    every checkpoint, so a resumed run reports exactly what the uninterrupted one would.
    """

    def __init__(self, run: RunDir, window: int, stop: bool, health: dict[str, Any], write: bool = True):
        self.run, self.window, self.stop, self.health, self.write = run, window, stop, health, write
        health.setdefault("saturated_flushes", 0)
        health.setdefault("collapsed_flushes", 0)
        health.setdefault("best_spread", 0.0)

    def check_finite(self, step: int, values: list[list[float]]) -> None:
        """Raise ``NonFiniteLoss`` at the first flushed step (``values`` rows end at ``step``) with a NaN or inf."""
        for i, v in enumerate(values):
            if not all(math.isfinite(x) for x in v):
                bad = [name for name, x in zip(METRIC_COLUMNS, v) if not math.isfinite(x)]
                raise NonFiniteLoss(f"non-finite {', '.join(bad)}", step - len(values) + i + 1, self.health)

    def observe(self, step: int, values: list[list[float]]) -> None:
        """Update the saturation and collapse counters from one flush (rows of ``METRIC_COLUMNS``)."""
        cols = {name: sum(v[i] for v in values) / len(values) for i, name in enumerate(METRIC_COLUMNS)}
        h = self.health
        h["best_spread"] = max(h["best_spread"], cols["fake_std"])
        saturated = cols["d_real"] > SATURATION and cols["d_fake"] < 1 - SATURATION
        collapsed = cols["fake_std"] < COLLAPSE_FRACTION * h["best_spread"]
        for event, bad, key, evidence in (
            ("d-saturation", saturated, "saturated_flushes",
             f"D(x) {cols['d_real']:.4f}, D(G(z)) {cols['d_fake']:.4f}"),
            ("mode-collapse", collapsed, "collapsed_flushes",
             f"sample spread {cols['fake_std']:.4f}, best {h['best_spread']:.4f}"),
        ):
            h[key] = h[key] + 1 if bad else 0
            if h[key] == self.window:
                detail = f"{evidence} over the last {self.window} flushes"
                action = "stop" if self.stop else "recorded"
                if self.write:
                    record_health_event(self.run, step, event, detail, action, h["lr_scale"])
                log.warning("health: %s at step %d (%s)", event, step, detail)
                if self.stop:
                    raise HealthStop(f"training stopped at step {step}: {event} ({detail}); "
                                     "set train.stop_on_health false to only record it")

