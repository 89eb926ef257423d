"""Train a tiny linear model with gradient descent on the visible GPU's host.

Real training would use a framework; this keeps the example dependency-free and
still writes the checkpoint and metrics a GPU job would.
"""

import argparse
import json
import os
import pathlib
import random

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=32)
opts = parser.parse_args()

rng = random.Random(0)
data = [(x, 3.0 * x + 1.0 + rng.gauss(0, 0.1)) for x in (rng.random() for _ in range(512))]
w = b = 0.0
for _ in range(opts.epochs):
    for i in range(0, len(data), opts.batch_size):
        batch = data[i:i + opts.batch_size]
        gw = sum(2 * (w * x + b - y) * x for x, y in batch) / len(batch)
        gb = sum(2 * (w * x + b - y) for x, y in batch) / len(batch)
        w, b = w - 0.5 * gw, b - 0.5 * gb
loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
pathlib.Path("checkpoints").mkdir(exist_ok=True)
pathlib.Path("checkpoints/model.json").write_text(json.dumps({"w": w, "b": b}))
pathlib.Path("metrics.json").write_text(json.dumps({
    "loss": loss, "epochs": opts.epochs,
    "device": os.environ.get("CUDA_VISIBLE_DEVICES", "cpu")}))
print(f"loss={loss:.4f}")
