"""The logits a foreign model gives, scored the way its own users would: numpy windowing and
Python onnxruntime on the source file (test-side only; the `infer import` tests compare
infer's scores of the imported model with these).

usage: import_reference.py MODEL OUTPUT KIND HU_MIN HU_MAX OUT_MIN OUT_MAX PATCH.npy...
KIND: logit (the output as is) or probability (its log-odds, p clipped to [2^-24, 1-2^-24]).
Patches must already be at the model's cube size. Prints `file,logit` per patch.
"""
import sys

import numpy as np
import onnxruntime as ort

model, output, kind = sys.argv[1:4]
hu_min, hu_max, out_min, out_max = map(float, sys.argv[4:8])
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
for path in sys.argv[8:]:
    hu = np.load(path).astype(np.float32)
    t = (np.clip(hu, hu_min, hu_max) - hu_min) / (hu_max - hu_min)
    x = (out_min + t * (out_max - out_min)).astype(np.float32)[None, None]
    v = float(np.asarray(sess.run([output], {name: x})[0]).reshape(-1)[0])
    if kind == "probability":
        eps = 2.0 ** -24
        p = min(max(v, eps), 1.0 - eps)
        v = float(np.log(p) - np.log1p(-p))
    print(f"{path},{v!r}")
