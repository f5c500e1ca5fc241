"""How far measured stage times stray from their predictions: the noise model, fitted and tracked.

The simulator's noise (``sim.engine.StageNoise``) makes a dispatch's compute take prediction x
``bias[stage]`` x a lognormal factor of mean 1 and log-spread ``sigma``. :func:`fit_noise` fits that
model to measurements (a stored live run's completed dispatches: ``trident simulate --noise-from``):

* per stage, the median ratio ``m`` of measured over predicted compute time (robust to a stray
  slow run);
* ``sigma``: the robust standard deviation (1.4826 x the median absolute deviation) of the log
  ratios around their stage's median, pooled over the stages (so a stage's bias is not counted as
  spread; a profile that is wrong by shape within a stage is);
* ``bias[stage] = m x exp(sigma^2 / 2)``: the *mean* factor, as ``StageNoise`` takes it (a mean-1
  lognormal's median is ``exp(-sigma^2 / 2)``, so the median ratio alone would understate it).

:class:`Spread` is the same ``sigma`` kept online over a window of recent dispatches, for a policy
that widens its margins where stage times are noisy (``trident``). Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAD_TO_SIGMA", "NoiseFit", "Spread", "fit_noise", "robust_sigma"]

MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a normal sample x this = its standard deviation


def robust_sigma(values: Iterable[float]) -> float:
    """1.4826 x the median absolute deviation from the median (0 for fewer than two values)."""
    xs = list(values)
    if len(xs) < 2:
        return 0.0
    mid = statistics.median(xs)
    return MAD_TO_SIGMA * statistics.median(abs(x - mid) for x in xs)


@dataclass(frozen=True, slots=True)
class NoiseFit:
    """The noise model fitted to measured stage times (see the module docstring)."""

    sigma: float  # log-spread of the factor around each stage's median
    bias: tuple[tuple[str, float], ...]  # (stage, mean factor): what StageNoise takes
    median: tuple[tuple[str, float], ...]  # (stage, median measured / predicted)
    samples: tuple[tuple[str, int], ...]  # (stage, dispatches fitted)
    against: str = ""  # the profile whose predictions the times were fitted against, where the caller names it

    @property
    def total(self) -> int:
        return sum(n for _, n in self.samples)

    def describe(self) -> str:
        """One line: sigma, and per stage the mean factor, the median and the sample count."""
        parts = [f"sigma {self.sigma:.3f}"]
        med, n = dict(self.median), dict(self.samples)
        parts += [f"{s} bias {b:.3f} (median {med[s]:.3f}, n={n[s]})" for s, b in self.bias]
        return "; ".join(parts)


def _spread(logs: dict[str, list[float]] | dict[str, deque[float]]) -> tuple[dict[str, float], float]:
    """Each stage's median log ratio, and the robust spread of the log ratios around their stage's median."""
    centre = {s: statistics.median(v) for s, v in logs.items()}
    return centre, robust_sigma(x - centre[s] for s, v in logs.items() for x in v)


def fit_noise(samples: Iterable[tuple[str, float, float]], *, min_samples: int = 3) -> NoiseFit:
    """Fit the noise model to ``(stage, predicted_s, measured_s)`` of completed whole dispatches.

    Samples with a non-positive prediction or measurement are skipped; a stage with fewer than
    ``min_samples`` left gets no bias (the simulator then takes it as 1). Raises ``ValueError``
    when no stage has enough."""
    logs: dict[str, list[float]] = {}
    for stage, predicted, measured in samples:
        if predicted > 0 and measured > 0 and math.isfinite(predicted) and math.isfinite(measured):
            logs.setdefault(str(stage), []).append(math.log(measured / predicted))
    logs = {s: v for s, v in logs.items() if len(v) >= min_samples}
    if not logs:
        raise ValueError(f"no stage has {min_samples} or more measured dispatches to fit stage-time noise to")
    centre, sigma = _spread(logs)
    order = sorted(logs)
    return NoiseFit(
        sigma=sigma,
        bias=tuple((s, math.exp(centre[s] + 0.5 * sigma * sigma)) for s in order),
        median=tuple((s, math.exp(centre[s])) for s in order),
        samples=tuple((s, len(logs[s])) for s in order),
    )


class Spread:
    """The robust spread (as :func:`fit_noise`'s ``sigma``: around each stage's median, so a stage's
    bias is not counted as noise) of the log ratios measured / predicted of each stage's last
    ``window`` dispatches; 0 until ``min_samples`` dispatches were seen, then re-estimated every
    ``every`` dispatches. ``factor(z)`` is ``exp(z x sigma)``: a prediction stretched by it covers
    that many log-spreads of the observed noise. Bias is calibration's to learn, not this."""

    def __init__(self, window: int = 128, min_samples: int = 16, every: int = 8) -> None:
        self.window, self.min_samples, self.every = window, min_samples, every
        self._logs: dict[str, deque[float]] = {}
        self._nonzero = 0  # log ratios in the windows that are not 0: with none, sigma is 0 (no sorting)
        self.seen = 0
        self.sigma = 0.0

    def observe(self, stage: str, predicted_s: float, measured_s: float) -> None:
        if not (predicted_s > 0 and measured_s > 0 and math.isfinite(predicted_s) and math.isfinite(measured_s)):
            return
        # a stage that took its prediction exactly may differ from it by rounding: that is no noise
        x = 0.0 if measured_s == predicted_s else math.log(measured_s / predicted_s)
        x = 0.0 if abs(x) < 1e-9 else x
        logs = self._logs.get(stage)  # (a StageKind hashes and compares as its value: str() only once)
        if logs is None:
            logs = self._logs[str(stage)] = deque(maxlen=self.window)
        if len(logs) == logs.maxlen and logs[0] != 0.0:
            self._nonzero -= 1  # about to leave the window
        logs.append(x)
        self._nonzero += x != 0.0
        self.seen += 1
        if self.seen >= self.min_samples and (self.seen - self.min_samples) % self.every == 0:
            self.sigma = _spread(self._logs)[1] if self._nonzero else 0.0

    def factor(self, z: float) -> float:
        return math.exp(z * self.sigma) if self.sigma > 0 else 1.0
