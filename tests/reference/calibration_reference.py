"""scikit-learn's numbers for the calibrate tests (test-side reference only).

usage: calibration_reference.py scores.csv T
Reads columns logit,label; prints JSON with roc_auc_score, average_precision_score,
brier_score_loss and log_loss on sigmoid(logit); LogisticRegression(penalty=None) on the
logit (Platt: a, b); IsotonicRegression(out_of_bounds="clip") predictions at probe points;
and the NLL of temperature scaling at the given T and the best over a fine grid.
"""
import csv
import json
import sys

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

with open(sys.argv[1], newline="") as f:
    rows = list(csv.DictReader(f))
z = np.array([float(r["logit"]) for r in rows])
y = np.array([int(r["label"]) for r in rows])
t_ours = float(sys.argv[2])
p = 1.0 / (1.0 + np.exp(-z))
lr = LogisticRegression(penalty=None, tol=1e-12, max_iter=10000).fit(z.reshape(-1, 1), y)
iso = IsotonicRegression(out_of_bounds="clip").fit(z, y)
probes = np.concatenate([np.linspace(z.min() - 1, z.max() + 1, 101), z[:50]])


def nll_t(t):
    q = np.clip(1.0 / (1.0 + np.exp(-z / t)), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


grid = np.linspace(0.05, 10.0, 20000)
print(json.dumps({
    "auroc": float(roc_auc_score(y, p)),
    "average_precision": float(average_precision_score(y, p)),
    "brier": float(brier_score_loss(y, p)),
    "log_loss": float(log_loss(y, p)),
    "platt_a": float(lr.coef_[0][0]),
    "platt_b": float(lr.intercept_[0]),
    "isotonic_probes": probes.tolist(),
    "isotonic_pred": iso.predict(probes).tolist(),
    "temperature_nll_ours": nll_t(t_ours),
    "temperature_nll_grid_best": min(nll_t(t) for t in grid),
}))
