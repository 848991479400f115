#!/usr/bin/env python3
"""The PyTorch reference for `bench --model mlp-train` and `--model bert-train`: a whole training
phase written as a PyTorch user writes it, timed the same way as the engine's. Prints one JSON object.

Each epoch: a fresh random order (torch.randperm), batches gathered by index, the forward in train
mode (dropout), cross-entropy, backward, AdamW, the loss read back (`loss.item()`, as a progress log
does); then a validation pass in eval mode (loss and accuracy) and a checkpoint of the model and
optimizer state (`torch.save`). The models are kd_step.py's: `mlp-train` the MLP 784-1200-1200-10 with
dropout 0.2 on random features; `bert-train` the 6-layer MiniLM-sized BERT (dropout 0.1, fresh
2-label head) on random token ids with a full mask.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from kd_step import LENGTH, Bert, mlp

WORKLOADS = {
    # name -> (model, lr, make a split of n samples: (inputs..., labels))
    "mlp-train": (
        lambda: mlp([784, 1200, 1200, 10], dropout=0.2),
        1e-3,
        lambda n: (torch.rand(n, 784) * 2 - 1, torch.randint(0, 10, (n,))),
    ),
    "bert-train": (
        lambda: Bert(6, p=0.1),
        5e-5,
        lambda n: (
            torch.randint(0, 30522, (n, LENGTH)),
            torch.zeros(n, LENGTH, dtype=torch.long),
            torch.ones(n, LENGTH),
            torch.randint(0, 2, (n,)),
        ),
    ),
}


def validate(model, split, batch):
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(split[-1]), batch):
            *x, y = (t[i : i + batch] for t in split)
            logits = model(*x)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
    n = len(split[-1])
    return total / n, correct / n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=WORKLOADS, default="mlp-train")
    p.add_argument("--samples", type=int, default=12800)
    p.add_argument("--validation", type=int, default=2560)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make_model, lr, make_split = WORKLOADS[args.model]
    model = make_model()
    train, held_out = make_split(args.samples), make_split(args.validation)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps, ends = [], []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "checkpoint.pt")
        start = last = time.perf_counter()
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(args.samples)
            for i in range(0, args.samples, args.batch):
                index = order[i : i + args.batch]
                *x, y = (t[index] for t in train)
                loss = F.cross_entropy(model(*x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
                now = time.perf_counter()
                steps.append((now - last) * 1000)
                last = now
            validate(model, held_out, args.batch)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, checkpoint)
            now = time.perf_counter()
            ends.append((now - last) * 1000)
            last = now
        wall = time.perf_counter() - start
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "samples_per_s": args.samples * args.epochs / wall,
        "step_ms": statistics.median(steps),
        "end_of_epoch_ms": statistics.mean(ends),
    }))


if __name__ == "__main__":
    main()
