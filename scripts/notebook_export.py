"""The source notebook's model, trained and exported the way its users do, for `infer import`.

Needs PyTorch with torchvision (and onnxscript for the exporter); the project venv's slim
torch cannot import. torchvision's r3d_18 with the notebook's 1-channel 7³ stride-2 stem and
512→128→ReLU→Dropout(0.3)→1 head, trained with AdamW on a patch folder (windowed to
[-1000, 400] HU → [0, 1], as the notebook did), then `torch.onnx.export` with a dynamic batch.
The ONNX file has none of our metadata: `infer import` is what makes it scoreable.

  python scripts/notebook_export.py PATCH_FOLDER OUT.onnx [EPOCHS]
writes OUT.onnx (with its weights in OUT.onnx.data, as PyTorch 2.11 exports) and the same
weights as a state dict, OUT.safetensors (what `trainer export --weights` and `train.init`
read): the few lines that save any PyTorch model's weights for this toolchain are

  from safetensors.torch import save_file
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "weights.safetensors")
"""
import csv
import os
import sys

import numpy as np
import torch
from torch import nn
from torchvision.models.video import r3d_18

folder, out = sys.argv[1], sys.argv[2]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
torch.manual_seed(0)

m = r3d_18(weights=None)
m.stem[0] = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
m.fc = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 1))

with open(os.path.join(folder, "patch_index.csv")) as f:
    rows = list(csv.DictReader(f))
x = np.stack([np.load(os.path.join(folder, r["patch_file"])).astype(np.float32) for r in rows])
x = (np.clip(x, -1000, 400) + 1000) / 1400
y = np.array([float(r["label"]) for r in rows], dtype=np.float32)
x, y = torch.from_numpy(x[:, None]), torch.from_numpy(y[:, None])

opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - y.mean()) / y.mean()))
for epoch in range(epochs):
    m.train()
    perm = torch.randperm(len(x))
    total = 0.0
    for i in range(0, len(x), 16):
        b = perm[i : i + 16]
        opt.zero_grad()
        loss = loss_fn(m(x[b]), y[b])
        loss.backward()
        opt.step()
        total += float(loss) * len(b)
    print(f"epoch {epoch + 1}: train loss {total / len(x):.4f}", flush=True)

m.eval()
torch.onnx.export(
    m,
    (x[:2],),
    out,
    input_names=["input"],
    output_names=["output"],
    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
)
print(f"exported {out}")

from safetensors.torch import save_file

state = out[: -len(".onnx")] + ".safetensors" if out.endswith(".onnx") else out + ".safetensors"
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, state)
print(f"saved the state dict {state}")
