#!/usr/bin/env python3
"""The PyTorch reference for `cargo run --release --bin bench`: the same distillation step, timed
the same way, on the same machine. Prints one JSON object.

Step: frozen teacher forward (no grad), student forward, Hinton loss (T=4, alpha=0.7, KL
batchmean * T^2 + CE), backward, AdamW; batch 128.
--model mlp (default): teacher MLP 784-1200-1200-10, student MLP 784-800-800-10.
--model conv, on 1x28x28 images: teacher conv 32 and 64 (3x3, padding 1, ReLU, 2x2 max pool) +
3136-256-10, student LeNet-5 (conv 6 5x5 padding 2 and 16 5x5, each ReLU and 2x2 max pool, +
400-120-84-10).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_net(blocks, head):
    """blocks: (in, out, kernel, padding), each conv followed by ReLU and 2x2 max pool; then an MLP head."""
    layers = []
    for cin, cout, k, pad in blocks:
        layers += [nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), mlp(head))


# model -> (teacher, student, shape of one sample)
MODELS = {
    "mlp": (lambda: mlp([784, 1200, 1200, 10]), lambda: mlp([784, 800, 800, 10]), (784,)),
    "conv": (
        lambda: conv_net([(1, 32, 3, 1), (32, 64, 3, 1)], [3136, 256, 10]),
        lambda: conv_net([(1, 6, 5, 2), (6, 16, 5, 0)], [400, 120, 84, 10]),
        (1, 28, 28),
    ),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--model", choices=MODELS, default="mlp")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make_teacher, make_student, shape = MODELS[args.model]
    teacher = make_teacher().eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student = make_student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    t, alpha = 4.0, 0.7
    phases = {"teacher_forward": [], "student_forward": [], "loss_backward": [], "optimizer": []}

    def step(record):
        t0 = time.perf_counter()
        with torch.no_grad():
            tl = teacher(x)
        t1 = time.perf_counter()
        sl = student(x)
        t2 = time.perf_counter()
        soft = F.kl_div(F.log_softmax(sl / t, -1), F.softmax(tl / t, -1), reduction="batchmean") * t * t
        loss = alpha * soft + (1 - alpha) * F.cross_entropy(sl, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if record:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[name].append(dt * 1000)

    for _ in range(5):
        step(False)
    rates = []
    for _ in range(args.reps):
        start = time.perf_counter()
        for _ in range(args.steps):
            step(True)
        rates.append(args.steps * args.batch / (time.perf_counter() - start))

    def latency(batch):
        inp = torch.randn(batch, *shape)
        with torch.no_grad():
            for _ in range(10):
                student(inp)
            blocks = []
            for _ in range(7):
                n, start = 0, time.perf_counter()
                while n < 3 or time.perf_counter() - start < 0.05:
                    student(inp)
                    n += 1
                blocks.append((time.perf_counter() - start) * 1000 / n)
        return statistics.median(blocks)

    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)

    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "samples_per_s": statistics.median(rates),
        "samples_per_s_all": rates,
        "phases_ms": {k: statistics.median(v) for k, v in phases.items()},
        "latency_ms": {"batch_1": latency(1), "batch_128": latency(128)},
        "sgemm_gflops": best,
    }))


if __name__ == "__main__":
    main()
