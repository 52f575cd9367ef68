"""The C2F budget controller (Quader et al., eq. 6): steer the coarse-exit threshold T so that
the running mean cost per video follows a budget B that may change at any video.

    T = T_av + (B - f_av) * (f_av - f_C2F) / (T_av - 1)                                  (eq. 6)

T_av is the mean threshold of the previous r recognitions and f_av their mean cost (r=100 by
default, as in the paper). (f_av - f_C2F) / (T_av - 1) is the slope of the secant of the
cost-vs-threshold curve through the running operating point and the point T=1, where nothing
exits and every video costs the full ensemble f_C2F, so eq. 6 moves T up when the stream is
under budget and down when it is over.

Choices the paper leaves open, made here and documented:
- Units. Costs are taken as fractions of f_C2F (B/f_C2F, f_av/f_C2F, with f_C2F the running
  mean full-ensemble cost of the same r videos, since videos of different lengths cost
  different amounts) and T is rescaled to u = (T - t_low) / (1 - t_low) over the paper's range
  [1 - e_N/e_1, 1] (u = 1: nothing exits). That range is wide when the ensemble makes far fewer
  training errors than the coarse pathway; in these units both axes span [0, 1]. The threshold
  reported and used stays in T units.
- Step. As printed, eq. 6 MULTIPLIES the cost error by the secant slope, which is not
  dimensionally consistent (a threshold change in units of cost squared). The default
  `rule="secant"` DIVIDES by it, the secant (Newton) step that eq. 6 approximates when the
  slope is about 1; `rule="printed"` keeps the printed form. Both move T up when the stream is
  under budget and down when it is over; on a steep cost curve the printed form overshoots a
  budget step (figures in benchmarks/README.md, Training).
- Degenerate secant. When T_av is so close to 1 that no video exits, f_av = f_C2F and eq. 6
  gives 0/0, and T would never move again; the secant slope is floored at `min_slope`. T is
  kept in [t_low, t_high].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class BudgetController:
    """Running state of eq. 6 over a stream of videos.

    t_low / t_high: bounds for T; t_init: the first threshold; window: r; min_slope: floor on
    the secant slope (fraction of f_C2F per unit of normalised T).
    rule: "secant" (default) steps by (B - f_av) / slope, the dimensionally consistent secant
    (Newton) step; "printed" steps by (B - f_av) * slope, eq. 6 exactly as printed. Both move
    T the same way and agree when the slope is 1 (see the module doc).
    """

    t_low: float
    t_high: float = 0.999
    t_init: float | None = None
    window: int = 100
    min_slope: float = 0.05
    rule: str = "secant"
    thresholds: deque = field(default_factory=deque, init=False)
    costs: deque = field(default_factory=deque, init=False)
    full_costs: deque = field(default_factory=deque, init=False)
    threshold: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.rule not in ("secant", "printed"):
            raise ValueError(f"rule={self.rule!r} must be 'secant' or 'printed'")
        if not self.t_low < self.t_high <= 1.0:
            raise ValueError(f"need t_low < t_high <= 1, got {self.t_low}, {self.t_high}")
        if self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1")
        start = (self.t_low + self.t_high) / 2 if self.t_init is None else self.t_init
        self.threshold = min(max(start, self.t_low), self.t_high)

    def update(self, budget: float, cost: float, full_cost: float) -> float:
        """Record the video just recognised with `self.threshold` and return the next T.

        budget: B for the next video (GMACs per video); cost: what this video cost; full_cost:
        what the whole ensemble would have cost on it (same units).
        """
        for values, value in (
            (self.thresholds, self.threshold),
            (self.costs, cost),
            (self.full_costs, full_cost),
        ):
            values.append(value)
            if len(values) > self.window:
                values.popleft()
        f_full = sum(self.full_costs) / len(self.full_costs)
        f_av = sum(self.costs) / len(self.costs) / f_full
        b = budget / f_full
        span = 1.0 - self.t_low
        u_av = (sum(self.thresholds) / len(self.thresholds) - self.t_low) / span
        slope = max((1.0 - f_av) / max(1.0 - u_av, 1e-6), self.min_slope)
        if self.rule == "printed":  # eq. 6 as printed: (B - f_av) * (f_av - 1) / (u_av - 1)
            u = u_av + (b - f_av) * slope
        else:  # the secant step: (B - f_av) * (u_av - 1) / (f_av - 1)
            u = u_av + (b - f_av) / slope
        self.threshold = min(max(self.t_low + u * span, self.t_low), self.t_high)
        return self.threshold

    def running_cost(self) -> float:
        """f_av in the caller's units (mean cost of the last `window` videos)."""
        return sum(self.costs) / max(len(self.costs), 1)
