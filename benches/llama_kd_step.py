#!/usr/bin/env python3
"""The PyTorch reference for `cargo run --release --bin bench -- --model llama`: the same token-level
distillation step, timed the same way, on the same machine. Prints one JSON object.

A Llama in plain torch (no `transformers` needed), eager attention as the engine computes it: RMSNorm,
rotary positions (Hugging Face's halves layout), grouped-query attention, SwiGLU, tied output layer.
Teacher: SmolLM2-135M's sizes (vocabulary 49,152, hidden 576, 30 layers, 9 heads with 3 key/value heads,
intermediate 1536, rope theta 100,000), frozen (no grad); student: the same with 6 layers. Weights
N(0, 0.02), norms 1, as `transformers` initialises them. Step: teacher forward, student forward, the loss
over the sequence's 127 next tokens, 0.9 * KL(teacher || student) at T = 1 (batchmean over tokens, full
vocabulary) + 0.1 * CE, backward, AdamW.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, HIDDEN, HEADS, KV_HEADS, INTER, THETA, EPS = 49152, 576, 9, 3, 1536, 100000.0, 1e-5


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        d = HIDDEN // HEADS
        self.q = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.k = nn.Linear(HIDDEN, KV_HEADS * d, bias=False)
        self.v = nn.Linear(HIDDEN, KV_HEADS * d, bias=False)
        self.o = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.gate = nn.Linear(HIDDEN, INTER, bias=False)
        self.up = nn.Linear(HIDDEN, INTER, bias=False)
        self.down = nn.Linear(INTER, HIDDEN, bias=False)
        self.norm1 = nn.RMSNorm(HIDDEN, eps=EPS)
        self.norm2 = nn.RMSNorm(HIDDEN, eps=EPS)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        d = HIDDEN // HEADS
        h = self.norm1(x)

        def heads(proj, n):
            return proj(h).view(b, t, n, d).transpose(1, 2)

        def rotate(z):
            half = z.shape[-1] // 2
            return z * cos + torch.cat([-z[..., half:], z[..., :half]], -1) * sin

        q, k, v = rotate(heads(self.q, HEADS)), rotate(heads(self.k, KV_HEADS)), heads(self.v, KV_HEADS)
        k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + mask, -1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(b, t, HIDDEN))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Layer() for _ in range(layers))
        self.norm = nn.RMSNorm(HIDDEN, eps=EPS)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        t = ids.shape[1]
        d = HIDDEN // HEADS
        inverse = 1.0 / THETA ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        angles = torch.arange(t, dtype=torch.float32)[:, None] * inverse[None]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x) @ self.embed.weight.T


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--student-layers", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, student = Llama(30).eval(), Llama(args.student_layers).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, VOCAB, (1, args.tokens))
    next_ids = ids[0, 1:]
    phases = {name: [] for name in ["teacher forward", "student forward", "loss + backward", "AdamW"]}

    def step(record):
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(ids)[0, :-1]
        t1 = time.perf_counter()
        logits = student(ids)[0, :-1]
        t2 = time.perf_counter()
        log_s = F.log_softmax(logits, -1)
        kl = F.kl_div(log_s, F.log_softmax(teacher_logits, -1), reduction="batchmean", log_target=True)
        loss = 0.9 * kl + 0.1 * F.cross_entropy(logits, next_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if record:
            for name, (a, b) in zip(phases, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
                phases[name].append((b - a) * 1000)

    for _ in range(args.warmup):
        step(False)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(True)
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tokens_per_s": args.steps * (args.tokens - 1) / elapsed,
        "phases_ms": {name: statistics.median(v) for name, v in phases.items()},
    }))


if __name__ == "__main__":
    main()
