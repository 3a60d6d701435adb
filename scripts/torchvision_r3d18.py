"""torchvision's r3d_18 with the source notebook's changes, as the reference for our spec.

Needs PyTorch with torchvision (the full install; the slim CPU venv cannot import torch).

  python scripts/torchvision_r3d18.py names > models/tests/fixtures/r3d_18_state_dict.txt
      writes every state-dict entry: name, shape, dtype (the fixture models/tests checks)
  python scripts/torchvision_r3d18.py check WEIGHTS.safetensors INPUT.npy LOGITS.npy
      loads our trainer's weights with load_state_dict(strict=True) and compares the logits
      of the input with ours (max |Δlogit| printed; exit 1 above 1e-4)
"""
import sys

import torch
from torch import nn
from torchvision.models.video import r3d_18


def notebook_r3d_18():
    m = r3d_18(weights=None)
    m.stem[0] = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    m.fc = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 1))
    return m


if sys.argv[1] == "names":
    for k, v in notebook_r3d_18().state_dict().items():
        print(k, "x".join(str(d) for d in v.shape) or "scalar", str(v.dtype).replace("torch.", ""))
elif sys.argv[1] == "check":
    import numpy as np
    from safetensors.torch import load_file

    m = notebook_r3d_18()
    missing_unexpected = m.load_state_dict(load_file(sys.argv[2]), strict=True)
    m.eval()
    x = torch.from_numpy(np.load(sys.argv[3]))
    ours = np.load(sys.argv[4])
    with torch.no_grad():
        theirs = m(x).numpy()
    d = float(np.abs(theirs - ours).max())
    print(f"load_state_dict(strict=True): {missing_unexpected}; logits {theirs.ravel()[:3]}...; max |Δlogit| vs ours = {d:.3e}")
    sys.exit(0 if d <= 1e-4 else 1)
