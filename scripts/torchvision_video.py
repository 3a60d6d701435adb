"""torchvision's video ResNets with the source notebook's changes, as the reference for our
specs (`r3d_18`, `mc3_18`, `r2plus1d_18`).

Needs PyTorch with torchvision (the full install; the slim CPU venv cannot import torch).

  python scripts/torchvision_video.py names ARCH > models/tests/fixtures/ARCH_state_dict.txt
      writes every state-dict entry: name, shape, dtype (the fixtures models/tests checks)
  python scripts/torchvision_video.py check ARCH WEIGHTS.safetensors INPUT.npy LOGITS.npy
      loads our trainer's weights with load_state_dict(strict=True) and compares the logits
      of the input with ours (max |Δlogit| printed; exit 1 above 1e-4); the files come from
      `cargo run -p trainer --example video_resnet_reference -- ARCH DIR`

The notebook's changes: a 1-channel stem and the head Linear(512,128)-ReLU-Dropout(0.3)-
Linear(128,1). r3d_18 and mc3_18 share torchvision's BasicStem, whose first convolution the
notebook replaced by Conv3d(1, 64, 7, stride 2, padding 3). r2plus1d_18's stem is (2+1)D:
its first convolution takes one channel, and its second strides 2 along z, so that the stem
halves every axis as the notebook's does; every other name and shape is torchvision's.
"""
import sys

import torch
from torch import nn
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18


def with_head(m):
    m.fc = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 1))
    return m


def notebook(arch):
    if arch in ("r3d_18", "mc3_18"):
        m = {"r3d_18": r3d_18, "mc3_18": mc3_18}[arch](weights=None)
        m.stem[0] = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif arch == "r2plus1d_18":
        m = r2plus1d_18(weights=None)
        m.stem[0] = nn.Conv3d(1, 45, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        m.stem[3] = nn.Conv3d(45, 64, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False)
    else:
        sys.exit(f"unknown architecture {arch}")
    return with_head(m)


if sys.argv[1] == "names":
    for k, v in notebook(sys.argv[2]).state_dict().items():
        print(k, "x".join(str(d) for d in v.shape) or "scalar", str(v.dtype).replace("torch.", ""))
elif sys.argv[1] == "check":
    import numpy as np
    from safetensors.torch import load_file

    m = notebook(sys.argv[2])
    missing_unexpected = m.load_state_dict(load_file(sys.argv[3]), strict=True)
    m.eval()
    x = torch.from_numpy(np.load(sys.argv[4]))
    ours = np.load(sys.argv[5])
    with torch.no_grad():
        theirs = m(x).numpy()
    d = float(np.abs(theirs - ours).max())
    print(f"{sys.argv[2]}: load_state_dict(strict=True): {missing_unexpected}; logits {theirs.ravel()[:3]}...; max |Δlogit| vs ours = {d:.3e}")
    sys.exit(0 if d <= 1e-4 else 1)
