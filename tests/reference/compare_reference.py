"""An independent computation of `froc compare`'s statistics (test-side only).

usage: compare_reference.py SPECIFICITY A.csv B.csv [C.csv ...]
Each CSV: patch_file, seriesuid, label, logit (the same patches; matched here by patch_file).
Prints JSON: per model AUROC (scikit-learn), average precision (scikit-learn), sensitivity
at the specificity (scikit-learn's ROC curve); per model against the first, the paired
DeLong test written from DeLong et al. (1988) / Sun & Xu (2014) with scipy's midranks, and
McNemar's test at the fixed-specificity thresholds (scipy: χ² with continuity correction,
exact binomial).
"""
import csv
import json
import sys

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

spec = float(sys.argv[1])
tables = []
for path in sys.argv[2:]:
    with open(path) as f:
        rows = {r["patch_file"]: r for r in csv.DictReader(f)}
    tables.append(rows)
patches = sorted(tables[0])
y = np.array([int(tables[0][p]["label"]) for p in patches])
scores = [np.array([float(t[p]["logit"]) for p in patches]) for t in tables]


def components(s):
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    r_all = stats.rankdata(np.concatenate([pos, neg]))
    v10 = (r_all[:m] - stats.rankdata(pos)) / n
    v01 = 1.0 - (r_all[m:] - stats.rankdata(neg)) / m
    return v10, v01


def sens_at_spec(s):
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ok = fpr <= 1.0 - spec + 1e-12
    i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return float(tpr[i]), float(thr[i])


out = {"models": [], "pairs": []}
for s in scores:
    sens, thr = sens_at_spec(s)
    out["models"].append({
        "auroc": roc_auc_score(y, s),
        "auprc": average_precision_score(y, s),
        "sensitivity": sens,
        "threshold": thr,
    })
a10, a01 = components(scores[0])
for k, s in enumerate(scores[1:], start=1):
    b10, b01 = components(s)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(a10) + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(a01)
    diff = b10.mean() - a10.mean()
    p = 2 * stats.norm.sf(abs(diff) / np.sqrt(var))
    right_a = (scores[0] >= out["models"][0]["threshold"]) == (y == 1)
    right_b = (s >= out["models"][k]["threshold"]) == (y == 1)
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    chi2 = max(abs(b - c) - 1, 0) ** 2 / (b + c) if b + c else 0.0
    out["pairs"].append({
        "auroc_diff": diff,
        "se": float(np.sqrt(var)),
        "p": float(p),
        "b": b,
        "c": c,
        "chi2": chi2,
        "p_chi2": float(stats.chi2.sf(chi2, 1)) if b + c else 1.0,
        "p_exact": float(stats.binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0,
    })
print(json.dumps(out))
