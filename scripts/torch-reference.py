#!/usr/bin/env python3
"""PyTorch CPU reference for `bench throughput`: the same models, batch and optimiser.

Trains the MLP 784-256-128-10 (dropout 0.1) and LeNet-5 on MNIST with Adam 1e-3, batch 64, and
prints training samples per second (forward, backward and Adam; no evaluation), in the format of
`bench throughput`. Not part of CI; run it in a virtual environment:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch
    .venv-torch/bin/python scripts/torch-reference.py [mlp|lenet] [--threads N]

`bench throughput` runs it itself, in the same run, when FERROTRAIN_BENCH_TORCH names that
Python interpreter.
"""

import argparse
import gzip
import os
import struct
import time

import torch
from torch import nn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist")
BATCH = 64


def images(path):
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise SystemExit(f"{path}: not an IDX image file")
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    return raw.reshape(count, rows * cols).float() / 255.0


def labels(path):
    with gzip.open(path, "rb") as f:
        magic, _count = struct.unpack(">II", f.read(8))
        if magic != 2049:
            raise SystemExit(f"{path}: not an IDX label file")
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()


def mlp():
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(128, 10),
    )


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        x = self.features(x.view(-1, 1, 28, 28))
        return self.classifier(x.flatten(1))


def measure(name, model, x, y, steps):
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def run(count):
        for step in range(count):
            start = (step * BATCH) % (len(x) - BATCH)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[start:start + BATCH]), y[start:start + BATCH])
            loss.backward()
            optimiser.step()

    run(steps // 10)
    started = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - started
    print(f"throughput {name} (pytorch {torch.__version__}): {steps * BATCH / seconds:.0f} "
          f"samples/s (batch {BATCH}, {steps} steps, {torch.get_num_threads()} threads)",
          flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("only", nargs="?", default="")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x = images(os.path.join(DATA, "train-images-idx3-ubyte.gz"))
    y = labels(os.path.join(DATA, "train-labels-idx1-ubyte.gz"))
    for name, build, steps in [("mlp 784-256-128-10", mlp, 3000), ("lenet-5", LeNet, 400)]:
        if name.startswith(args.only):
            measure(name, build(), x, y, steps)


if __name__ == "__main__":
    main()
