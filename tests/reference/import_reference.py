"""The logits a foreign model gives, scored the way its own users would: numpy windowing and
Python onnxruntime on the source file (test-side only; the `infer import` tests compare
infer's scores of the imported model with these).

usage: import_reference.py MODEL OUTPUT KIND HU_MIN HU_MAX OUT_MIN OUT_MAX PATCH.npy...
KIND: logit (the output as is) or probability (its log-odds, p clipped to [2^-24, 1-2^-24]);
for an [N, 2] output two-class-logits (class 1 minus class 0) or softmax (log(p1 / p0), each
p clipped likewise). A model whose input fixes its batch size gets that many copies.
Patches must already be at the model's cube size. Prints `file,logit` per patch.
"""
import sys

import numpy as np
import onnxruntime as ort

model, output, kind = sys.argv[1:4]
hu_min, hu_max, out_min, out_max = map(float, sys.argv[4:8])
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
name = inp.name
batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
eps = 2.0 ** -24
for path in sys.argv[8:]:
    hu = np.load(path).astype(np.float32)
    t = (np.clip(hu, hu_min, hu_max) - hu_min) / (hu_max - hu_min)
    x = (out_min + t * (out_max - out_min)).astype(np.float32)[None, None]
    y = np.asarray(sess.run([output], {name: np.repeat(x, batch, axis=0)})[0])[0].reshape(-1)
    if kind == "probability":
        p = min(max(float(y[0]), eps), 1.0 - eps)
        v = float(np.log(p) - np.log1p(-p))
    elif kind == "two-class-logits":
        v = float(y[1]) - float(y[0])
    elif kind == "softmax":
        p1, p0 = (min(max(float(y[k]), eps), 1.0 - eps) for k in (1, 0))
        v = float(np.log(p1) - np.log(p0))
    else:
        v = float(y[0])
    print(f"{path},{v!r}")
