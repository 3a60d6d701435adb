"""PyTorch eager reference for scripts/bench-train: the same model, data, batch, threads,
precision and optimiser as our trainer, written the way a PyTorch user would at its best
settings (cuDNN benchmark, AMP autocast + GradScaler on CUDA, fused AdamW on CPU and
CUDA, pinned host batches copied asynchronously). Prints: median samples/s (first epoch dropped
as warm-up) and peak RSS in KiB.

  python torch_train_ref.py ARCH FOLDER THREADS BATCH EPOCHS CUBE DEVICE PRECISION
"""
import csv, os, resource, sys, time

import numpy as np
import torch
from torch import nn

arch, folder = sys.argv[1], sys.argv[2]
threads, batch, epochs, cube = (int(v) for v in sys.argv[3:7])
device, precision = sys.argv[7], sys.argv[8]
torch.set_num_threads(threads)
torch.manual_seed(0)
cuda = device.startswith("cuda")
amp = precision == "fp16"
torch.backends.cudnn.benchmark = True

try:
    from torchvision.models.video import r3d_18
except ImportError:  # no torchvision on the host: the same modules, named as torchvision names them
    def r3d_18(weights=None):
        def cbr(i, o, s):
            return nn.Sequential(nn.Conv3d(i, o, 3, s, 1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True))

        class BasicBlock(nn.Module):
            def __init__(self, i, o, s):
                super().__init__()
                self.conv1 = cbr(i, o, s)
                self.conv2 = nn.Sequential(nn.Conv3d(o, o, 3, 1, 1, bias=False), nn.BatchNorm3d(o))
                self.relu = nn.ReLU(inplace=True)
                self.downsample = (nn.Sequential(nn.Conv3d(i, o, 1, s, bias=False), nn.BatchNorm3d(o))
                                   if s != 1 or i != o else None)

            def forward(self, x):
                r = x if self.downsample is None else self.downsample(x)
                return self.relu(self.conv2(self.conv1(x)) + r)

        m = nn.Module()
        m.stem = nn.Sequential(nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(64),
                               nn.ReLU(inplace=True))
        for k, (i, o, s) in enumerate([(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)], 1):
            setattr(m, f"layer{k}", nn.Sequential(BasicBlock(i, o, s), BasicBlock(o, o, 1)))
        m.avgpool = nn.AdaptiveAvgPool3d(1)
        m.fc = nn.Linear(512, 400)

        def fwd(x):
            x = m.stem(x)
            for k in range(1, 5):
                x = getattr(m, f"layer{k}")(x)
            return m.fc(m.avgpool(x).flatten(1))
        m.forward = fwd
        return m

rows = list(csv.DictReader(open(os.path.join(folder, "patch_index.csv"))))
x = np.stack([np.load(os.path.join(folder, r["patch_file"])).astype(np.float32) for r in rows])
x = torch.from_numpy(((np.clip(x, -1000, 400) + 1000) / 1400).astype(np.float32))[:, None]
y = torch.tensor([float(r["label"]) for r in rows])
if arch == "r3d_18":
    m = r3d_18(weights=None)
    m.stem[0] = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    m.fc = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 1))
else:
    def cbr(i, o): return [nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU()]
    m = nn.Sequential(*cbr(1, 16), nn.MaxPool3d(2), *cbr(16, 32), nn.MaxPool3d(2), *cbr(32, 64),
                      nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
m = m.to(device)
# fused=True: one kernel per step on CPU (since torch 2.4) and CUDA; on CPU the default
# for-loop implementation is about 4x slower for r3d_18's 33M parameters.
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
scaler = torch.amp.GradScaler("cuda", enabled=amp)
lossf = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(len(y) - y.sum()) / y.sum()], device=device))
m.train()
rates = []
for e in range(epochs):
    perm = torch.randperm(len(y))
    t = time.perf_counter()
    seen = 0
    for i in range(0, len(y), batch):
        idx = perm[i:i + batch]
        if len(idx) < 2:
            continue
        xb, yb = x[idx], y[idx]
        if cuda:
            xb, yb = xb.pin_memory().to(device, non_blocking=True), yb.pin_memory().to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            out = m(xb).flatten()
        loss = lossf(out.float(), yb)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        seen += len(idx)
    if cuda:
        torch.cuda.synchronize()
    rates.append(seen / (time.perf_counter() - t))
print(f"{np.median(rates[1:]):.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
