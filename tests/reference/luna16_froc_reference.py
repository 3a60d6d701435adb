"""An independent reference for `froc`, written from the rules in evaluation/src/froc/mod.rs
(themselves a study of the LUNA16 evaluation script's behaviour), computing the curve the
way that script does: sklearn.metrics.roc_curve on the kept entries, rescaled, then
np.interp at the seven rates. Used by the test suite only.

usage: luna16_froc_reference.py annotations.csv excluded.csv seriesuids.csv results.csv [cap]
prints the seven sensitivities, one per line (repr).
"""
import csv
import sys

import numpy as np
from sklearn.metrics import roc_curve


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    ann_p, exc_p, uids_p, res_p = sys.argv[1:5]
    cap = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    with open(uids_p, newline="") as f:
        uids = [r[0] for r in csv.reader(f) if r]
    listed = set(uids)
    ann, exc, res = {}, {}, {}
    for target, path, key in ((ann, ann_p, "diameter_mm"), (exc, exc_p, "diameter_mm"), (res, res_p, "probability")):
        for r in rows(path):
            if r["seriesuid"] in listed:
                target.setdefault(r["seriesuid"], []).append(
                    (float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]), float(r[key])))
    gt, prob, excl = [], [], []
    for u in uids:
        cands = res.get(u, [])
        if cap > 0 and len(cands) > cap:
            t = sorted((c[3] for c in cands), reverse=True)[cap]
            cands = [c for c in cands if c[3] > t]
        pool = set(range(len(cands)))

        def r2(d):
            d = 10.0 if d < 0 else d
            return (d / 2.0) ** 2

        def d2(a, b):
            return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2

        for n in ann.get(u, []):
            hits = [i for i, c in enumerate(cands) if d2(n, c) < r2(n[3])]
            if hits:
                gt.append(1.0); prob.append(max(cands[i][3] for i in hits)); excl.append(False)
                pool -= set(hits)
            else:
                gt.append(1.0); prob.append(-1e9); excl.append(True)
        for e in exc.get(u, []):
            pool -= {i for i in pool if d2(e, cands[i]) < r2(e[3])}
        for i in sorted(pool):
            gt.append(0.0); prob.append(cands[i][3]); excl.append(False)
    gt, prob, excl = np.array(gt), np.array(prob), np.array(excl)
    keep = ~excl
    det = gt[keep].sum()
    fpr, tpr, _ = roc_curve(gt[keep], prob[keep])
    if gt.sum() == len(gt):
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (keep.sum() - det) / len(uids)
    sens = tpr * det / gt.sum()
    for rate in (0.125, 0.25, 0.5, 1, 2, 4, 8):
        print(repr(float(np.interp(rate, fps, sens))))


if __name__ == "__main__":
    main()
