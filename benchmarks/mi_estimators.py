"""Accuracy of FALCON's entropy/MI estimators on correlated Gaussians with known MI.

X ~ N(0, I_d), Y = rho X + sqrt(1 - rho^2) Z: I(X;Y) = -d/2 log(1 - rho^2). Prints a Markdown table
of estimates (nats) for the closed-form Gaussian estimator, the leave-one-out KDE (default) and the
official code's resubstitution KDE. Usage: python benchmarks/mi_estimators.py [--samples 500] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reporting import text_table  # noqa: E402
from falcon_plugin.mi import entropy_gaussian, entropy_kde  # noqa: E402


def _mi(x: np.ndarray, y: np.ndarray, estimate) -> float:
    return estimate(x) + estimate(y) - estimate(np.hstack([x, y]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    estimators = {
        "gaussian": entropy_gaussian,
        "kde (leave-one-out, default)": entropy_kde,
        "kde (resubstitution, official)": lambda x: entropy_kde(x, leave_one_out=False),
    }
    rows = []
    for dim, rho in [(1, 0.0), (1, 0.8), (2, 0.0), (2, 0.6), (4, 0.0), (4, 0.5), (8, 0.5)]:
        truth = -0.5 * dim * math.log(1 - rho**2)
        cells = []
        for estimate in estimators.values():
            values = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                x = rng.standard_normal((args.samples, dim))
                y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((args.samples, dim))
                values.append(_mi(x, y, estimate))
            cells.append(f"{np.mean(values):+.3f} ± {np.std(values):.3f}")
        rows.append([str(dim), str(rho), f"{truth:.3f}", *cells])
    print(text_table(["dim per side", "rho", "true MI", *estimators], rows))


if __name__ == "__main__":
    main()
