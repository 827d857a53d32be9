"""Pure statistics of the findings study: seed aggregation, the entropy-performance law, and a
rank correlation with a permutation p-value. numpy only (no scipy in the environment)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# two-sided 95% Student t quantiles t_{0.975, df} for df = 1..10; above that, the normal 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def t975(df: int) -> float:
    """t_{0.975, df}: the multiplier of a two-sided 95% interval of a mean from df + 1 values."""
    if df < 1:
        return math.nan
    # within 0.03 of the exact value for df > 10
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclass(frozen=True)
class Agg:
    """Mean over seeds with the sample standard deviation (ddof 1) and the 95% t-interval
    half-width t_{0.975, n-1} * sd / sqrt(n); sd and ci are nan for a single seed."""

    mean: float
    sd: float
    ci: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1 or math.isnan(self.sd):
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci


def aggregate(values) -> Agg:
    """Mean, sd and 95% interval of the finite values (one per seed)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return Agg(math.nan, math.nan, math.nan, 0)
    if len(x) == 1:
        return Agg(float(x[0]), math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    return Agg(float(x.mean()), sd, t975(len(x) - 1) * sd / math.sqrt(len(x)), len(x))


def aggregate_curves(curves: list[dict[int, float]]) -> dict[int, Agg]:
    """Per step, the aggregate over the curves (one per seed) that have that step."""
    steps = sorted({s for c in curves for s in c})
    return {s: aggregate([c[s] for c in curves if s in c]) for s in steps}


@dataclass(frozen=True)
class LawFit:
    """R = -a * exp(H) + b fitted to (H, R) points; ceiling = b - a, the predicted R at H -> 0."""

    a: float
    b: float
    r2: float
    n: int

    @property
    def ceiling(self) -> float:
        return self.b - self.a

    def predict(self, h):
        return -self.a * np.exp(np.asarray(h, dtype=float)) + self.b


def fit_entropy_law(entropy, accuracy) -> LawFit:
    """The entropy-performance law of Cui et al. (arXiv 2505.22617, eq. "R = -a exp(H) + b"):
    downstream accuracy R as a function of policy entropy H. Linear least squares in x = exp(H):
    a = -cov(x, R) / var(x), b = mean(R) + a * mean(x); R^2 = 1 - SS_res / SS_tot. Needs at least
    3 points with distinct H; else a, b, R^2 are nan."""
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(h) & np.isfinite(r)
    h, r = h[ok], r[ok]
    x = np.exp(h)
    if len(x) < 3 or float(np.var(x)) == 0.0:
        return LawFit(math.nan, math.nan, math.nan, len(x))
    a = -float(np.mean((x - x.mean()) * (r - r.mean())) / np.var(x))
    b = float(r.mean() + a * x.mean())
    ss_res = float(np.sum((r - (-a * x + b)) ** 2))
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    return LawFit(a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan, len(x))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x, y, permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of the ranks) and its two-sided permutation p-value
    (share of random pairings with |rho| at least as large; add-one smoothed)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)  # pairs with a missing value are left out
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    if len(rx) < 3 or rx.std() == 0 or ry.std() == 0:
        return math.nan, math.nan
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rng = np.random.default_rng(seed)
    perm = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(permutations)])
    return rho, float((np.sum(np.abs(perm) >= abs(rho) - 1e-12) + 1) / (permutations + 1))


def welch_diff(a, b) -> Agg:
    """mean(a) - mean(b) with a 95% Welch interval (Welch-Satterthwaite degrees of freedom, rounded
    down); sd is the standard error of the difference."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return Agg(
            float(x.mean() - y.mean()) if len(x) and len(y) else math.nan,
            math.nan,
            math.nan,
            min(len(x), len(y)),
        )
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    df = (
        (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
        if se > 0
        else len(x) + len(y) - 2
    )
    return Agg(float(x.mean() - y.mean()), se, t975(max(1, int(df))) * se, min(len(x), len(y)))
