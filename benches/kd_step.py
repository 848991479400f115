#!/usr/bin/env python3
"""The PyTorch reference for `cargo run --release --bin bench`: the same distillation step, timed
the same way, on the same machine. Prints one JSON object.

Step: frozen teacher forward (no grad), student forward, Hinton loss (T=4, alpha=0.7, KL
batchmean * T^2 + CE), backward, AdamW; batch 128 (32 for bert).
--model mlp (default): teacher MLP 784-1200-1200-10, student MLP 784-800-800-10.
--model conv, on 1x28x28 images: teacher conv 32 and 64 (3x3, padding 1, ReLU, 2x2 max pool) +
3136-256-10, student LeNet-5 (conv 6 5x5 padding 2 and 16 5x5, each ReLU and 2x2 max pool, +
400-120-84-10).
--model bert: BertForSequenceClassification in plain torch (no `transformers` needed) with
MiniLM-L6-H384's sizes (vocabulary 30522, hidden 384, 12 heads, intermediate 1536, 512
positions, 2 token types, exact GELU, layer-norm eps 1e-12, 2 labels), initialised as
`transformers` does; teacher 6 layers (eval mode), student 3 layers (train mode: dropout
--dropout, 0.1 by default); 64 random token ids a sequence, segment 0, full attention mask.
Attention is the eager softmax(QK^T/sqrt(d) + mask) V, as the engine computes it.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(widths, dropout=0.0):
    """Linear layers with ReLU between them and, when training with dropout, dropout after each hidden one."""
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def conv_net(blocks, head):
    """blocks: (in, out, kernel, padding), each conv followed by ReLU and 2x2 max pool; then an MLP head."""
    layers = []
    for cin, cout, k, pad in blocks:
        layers += [nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), mlp(head))


class BertLayer(nn.Module):
    def __init__(self, h, heads, inter, eps, p):
        super().__init__()
        self.heads, self.head_dim = heads, h // heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attention_output = nn.Linear(h, h)
        self.attention_norm = nn.LayerNorm(h, eps=eps)
        self.intermediate = nn.Linear(h, inter)
        self.output = nn.Linear(inter, h)
        self.output_norm = nn.LayerNorm(h, eps=eps)
        self.dropout = nn.Dropout(p)

    def forward(self, x, key_bias):
        b, length, h = x.shape

        def split(t):
            return t.view(b, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + key_bias
        probs = self.dropout(scores.softmax(-1))
        context = (probs @ v).transpose(1, 2).reshape(b, length, h)
        a = self.attention_norm(self.dropout(self.attention_output(context)) + x)
        return self.output_norm(self.dropout(self.output(F.gelu(self.intermediate(a)))) + a)


class Bert(nn.Module):
    """BertForSequenceClassification: embeddings, encoder, tanh pooler on the first token, classifier."""

    def __init__(self, layers, vocab=30522, h=384, heads=12, inter=1536, positions=512, types=2, labels=2, eps=1e-12, p=0.1):
        super().__init__()
        self.word = nn.Embedding(vocab, h, padding_idx=0)
        self.position = nn.Embedding(positions, h)
        self.token_type = nn.Embedding(types, h)
        self.norm = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(BertLayer(h, heads, inter, eps, p) for _ in range(layers))
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, labels)
        self.dropout = nn.Dropout(p)
        for m in self.modules():  # transformers' _init_weights, initializer_range 0.02
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.word.weight[0].zero_()

    def forward(self, ids, types, mask):
        positions = torch.arange(ids.shape[1])
        x = self.dropout(self.norm(self.word(ids) + self.position(positions) + self.token_type(types)))
        key_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.classifier(self.dropout(torch.tanh(self.pooler(x[:, 0]))))


LENGTH = 64


def features(shape):
    return lambda batch: (torch.randn(batch, *shape),)


def tokens(batch):
    """Random ids, segment 0, full mask (the mask as float, as the engine reads it)."""
    return (torch.randint(0, 30522, (batch, LENGTH)), torch.zeros(batch, LENGTH, dtype=torch.long), torch.ones(batch, LENGTH))


# model -> (teacher, student, inputs of a batch, classes, default batch)
MODELS = {
    "mlp": (lambda p: mlp([784, 1200, 1200, 10]), lambda p: mlp([784, 800, 800, 10]), features((784,)), 10, 128),
    "conv": (
        lambda p: conv_net([(1, 32, 3, 1), (32, 64, 3, 1)], [3136, 256, 10]),
        lambda p: conv_net([(1, 6, 5, 2), (6, 16, 5, 0)], [400, 120, 84, 10]),
        features((1, 28, 28)),
        10,
        128,
    ),
    "bert": (lambda p: Bert(6, p=p), lambda p: Bert(3, p=p), tokens, 2, 32),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=0, help="default 128, 32 for bert")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.1, help="bert's student, in training")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--model", choices=MODELS, default="mlp")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make_teacher, make_student, inputs, classes, default_batch = MODELS[args.model]
    args.batch = args.batch or default_batch
    teacher = make_teacher(args.dropout).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student = make_student(args.dropout).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    x = inputs(args.batch)
    y = torch.randint(0, classes, (args.batch,))
    t, alpha = 4.0, 0.7
    phases = {"teacher_forward": [], "student_forward": [], "loss_backward": [], "optimizer": []}

    def step(record):
        t0 = time.perf_counter()
        with torch.no_grad():
            tl = teacher(*x)
        t1 = time.perf_counter()
        sl = student(*x)
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

    for _ in range(args.warmup):
        step(False)
    rates = []
    for _ in range(args.reps):
        start = time.perf_counter()
        for _ in range(args.steps):
            step(True)
        rates.append(args.steps * args.batch / (time.perf_counter() - start))

    student.eval()

    def latency(batch):
        inp = inputs(batch)
        with torch.no_grad():
            for _ in range(10):
                student(*inp)
            blocks = []
            for _ in range(7):
                n, start = 0, time.perf_counter()
                while n < 3 or time.perf_counter() - start < 0.05:
                    student(*inp)
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
        "latency_ms": {"batch_1": latency(1), f"batch_{args.batch}": latency(args.batch)},
        "sgemm_gflops": best,
    }))


if __name__ == "__main__":
    main()
