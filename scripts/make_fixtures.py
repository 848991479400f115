#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the Rust tests compare against.

    python3 -m venv .venv && .venv/bin/pip install torch
    .venv/bin/python scripts/make_fixtures.py

Outputs (committed; CI only reads them):
  tests/fixtures/hinton_loss.json  logits, labels, T, alpha -> loss, its parts, d loss / d student logits
  tests/fixtures/optimizers.json   parameters and gradients -> parameters after AdamW / SGD steps
  tests/fixtures/linear.json       x, W, b, upstream gradient -> act(x W^T + b) and its gradients
  tests/fixtures/kd_losses.json    logit_cases: student logits, teachers' logits and weights, loss kind
                                   (kl, reverse_kl, js with beta, mse), T -> loss, d loss / d student logits;
                                   feature_cases: student and teacher features (batch x d, batch x C x H x W),
                                   loss kind (mse, cosine) -> loss, d loss / d student feature
  tests/fixtures/conv_net.json     a conv net (Conv2d, BatchNorm2d, ReLU, MaxPool2d / AvgPool2d, Flatten, Linear):
                                   arch (Distillery's JSON spec), image shape, classes, every tensor under
                                   Distillery's names (blocks.{i}.conv|bn.*, layers.{i}.*), an input batch (flat
                                   C*H*W rows), upstream U -> logits in eval mode; logits in train mode (batch
                                   statistics); the BN running stats after that forward; d sum(train logits * U)
                                   / d every parameter

Inputs are float32 (what the engine trains in); references are computed in float64 from them.
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def hinton(student, teacher, labels, t, alpha):
    soft = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.softmax(teacher / t, dim=-1),
        reduction="batchmean",
    ) * (t * t)
    hard = F.cross_entropy(student, labels)
    return alpha * soft + (1 - alpha) * hard, soft, hard


def loss_cases():
    g = torch.Generator().manual_seed(20151109)
    cases = []
    for name, batch, classes, t, alpha, scale in [
        ("typical", 8, 10, 4.0, 0.7, 3.0),
        ("t1_alpha_half", 5, 3, 1.0, 0.5, 2.0),
        ("hard_only", 4, 6, 4.0, 0.0, 2.0),
        ("soft_only", 6, 10, 6.0, 1.0, 2.0),
        ("confident_teacher", 7, 10, 2.0, 0.9, 40.0),
        ("single_sample", 1, 4, 3.0, 0.3, 1.0),
        ("wide", 16, 100, 5.0, 0.5, 4.0),
    ]:
        student = (torch.randn(batch, classes, generator=g) * scale).float()
        teacher = (torch.randn(batch, classes, generator=g) * scale).float()
        labels = torch.randint(0, classes, (batch,), generator=g)
        s = student.double().requires_grad_(True)
        total, soft, hard = hinton(s, teacher.double(), labels, t, alpha)
        total.backward()
        cases.append({
            "name": name,
            "temperature": t,
            "alpha": alpha,
            "student_logits": student.tolist(),
            "teacher_logits": teacher.tolist(),
            "labels": labels.tolist(),
            "loss": total.item(),
            "soft": soft.item(),
            "hard": hard.item(),
            "grad_student_logits": s.grad.tolist(),
        })
    return {"generator": "scripts/make_fixtures.py", "torch": torch.__version__, "cases": cases}


def optimizer_cases():
    g = torch.Generator().manual_seed(7)
    cases = []
    for name, make, spec in [
        ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
         {"kind": "adamw", "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}),
        ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.001),
         {"kind": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.001}),
    ]:
        start = torch.randn(3, 4, generator=g).float()
        grads = [torch.randn(3, 4, generator=g).float() for _ in range(4)]
        p = torch.nn.Parameter(start.double().clone())
        opt = make([p])
        after = []
        for grad in grads:
            p.grad = grad.double().clone()
            opt.step()
            after.append(p.detach().clone().tolist())
        cases.append({
            "name": name,
            "optimizer": spec,
            "start": start.tolist(),
            "grads": [x.tolist() for x in grads],
            "after_each_step": after,
        })
    return {"generator": "scripts/make_fixtures.py", "torch": torch.__version__, "cases": cases}


def linear_cases():
    g = torch.Generator().manual_seed(1998)
    cases = []
    for name, batch, inputs, outputs, relu in [
        ("hidden_relu", 6, 9, 5, True),
        ("output_no_activation", 4, 5, 3, False),
        ("wide", 16, 40, 24, True),
    ]:
        x = torch.randn(batch, inputs, generator=g).float()
        w = torch.randn(outputs, inputs, generator=g).float()
        b = torch.randn(outputs, generator=g).float()
        upstream = torch.randn(batch, outputs, generator=g).float()
        xd, wd, bd = (t.double().requires_grad_(True) for t in (x, w, b))
        y = F.linear(xd, wd, bd)
        if relu:
            y = F.relu(y)
        (y * upstream.double()).sum().backward()
        cases.append({
            "name": name,
            "relu": relu,
            "x": x.tolist(),
            "weight": w.tolist(),
            "bias": b.tolist(),
            "upstream": upstream.tolist(),
            "y": y.detach().tolist(),
            "grad_x": xd.grad.tolist(),
            "grad_weight": wd.grad.tolist(),
            "grad_bias": bd.grad.tolist(),
        })
    return {"generator": "scripts/make_fixtures.py", "torch": torch.__version__, "cases": cases}


def logit_loss(kind, beta, student, teachers, t):
    """The loss and the teachers' mixture probabilities (None for mse, which has none)."""
    if kind == "mse":
        return F.mse_loss(student, sum(w * logits for logits, w in teachers)), None

    def kl(log_p, log_q):  # KL(p || q), batchmean
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)

    log_ps = F.log_softmax(student / t, dim=-1)
    log_pt = torch.logsumexp(torch.stack([math.log(w) + F.log_softmax(x / t, dim=-1) for x, w in teachers]), dim=0)
    if kind == "kl":
        d = kl(log_pt, log_ps)
    elif kind == "reverse_kl":
        d = kl(log_ps, log_pt)
    else:
        log_m = torch.logsumexp(torch.stack([math.log(beta) + log_pt, math.log(1 - beta) + log_ps]), dim=0)
        d = beta * kl(log_pt, log_m) + (1 - beta) * kl(log_ps, log_m)
    return d * (t * t), log_pt.exp()


def feature_loss(kind, student, teacher):
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1, eps=1e-8)).mean()


def kd_loss_cases():
    g = torch.Generator().manual_seed(20240301)
    logit_cases = []
    for kind, beta in [("kl", None), ("reverse_kl", None), ("js", 0.5), ("js", 0.1), ("mse", None)]:
        for weights in ([1.0], [0.7, 0.3]):
            # "extreme": teacher logits ~1000 apart, so some teacher probabilities are exactly 0.
            for setting, t, batch, classes, teacher_scale in [
                ("T1", 1.0, 6, 10, 3.0),
                ("T4", 4.0, 5, 7, 3.0),
                ("extreme", 1.0, 4, 6, 1000.0),
            ]:
                student = (torch.randn(batch, classes, generator=g) * 3.0).float()
                teachers = [(torch.randn(batch, classes, generator=g) * teacher_scale).float() for _ in weights]
                s = student.double().requires_grad_(True)
                pairs = [(x.double(), w) for x, w in zip(teachers, weights)]
                loss, p_teacher = logit_loss(kind, beta, s, pairs, t)
                if p_teacher is not None:
                    assert (setting == "extreme") == bool((p_teacher == 0).any()), setting
                loss.backward()
                label = kind if beta is None else f"js{beta:g}"
                logit_cases.append({
                    "name": f"{label}_{'one' if len(weights) == 1 else 'ensemble'}_{setting}",
                    "loss": kind,
                    "beta": beta,
                    "temperature": t,
                    "student_logits": student.tolist(),
                    "teachers": [{"logits": x.tolist(), "weight": w} for x, w in zip(teachers, weights)],
                    "value": loss.item(),
                    "grad_student_logits": s.grad.tolist(),
                })
    feature_cases = []
    for name, kind, shape in [
        ("mse_2d", "mse", (8, 16)),
        ("cosine_2d", "cosine", (8, 16)),
        ("mse_4d", "mse", (4, 3, 5, 5)),
        ("cosine_4d", "cosine", (4, 3, 5, 5)),
    ]:
        student = torch.randn(*shape, generator=g).float()
        teacher = (student + 0.7 * torch.randn(*shape, generator=g)).float()
        s = student.double().requires_grad_(True)
        loss = feature_loss(kind, s, teacher.double())
        loss.backward()
        feature_cases.append({
            "name": name,
            "loss": kind,
            "student": student.tolist(),
            "teacher": teacher.tolist(),
            "value": loss.item(),
            "grad_student": s.grad.tolist(),
        })
    return {
        "generator": "scripts/make_fixtures.py",
        "torch": torch.__version__,
        "logit_cases": logit_cases,
        "feature_cases": feature_cases,
    }


class ConvBlock(torch.nn.Module):
    """conv -> batch norm (optional) -> ReLU -> pooling (optional): Distillery's block, in torch.nn."""

    def __init__(self, spec, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, spec["channels"], spec["kernel"], stride=spec["stride"],
                                    padding=spec["padding"], dtype=torch.float32)
        self.bn = (torch.nn.BatchNorm2d(spec["channels"], eps=1e-5, momentum=0.1, dtype=torch.float32)
                   if spec["batch_norm"] else torch.nn.Identity())
        self.relu = torch.nn.ReLU()
        pool = {"max": torch.nn.MaxPool2d, "avg": torch.nn.AvgPool2d}[spec["pool"]]
        self.pool = pool(spec["pool_size"])  # stride = kernel, floor (ceil_mode=False)

    def forward(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))


class ConvNet(torch.nn.Module):
    def __init__(self, arch, image, classes):
        super().__init__()
        channels, height, width = image["channels"], image["height"], image["width"]
        self.blocks = torch.nn.ModuleList()
        for spec in arch["blocks"]:
            self.blocks.append(ConvBlock(spec, channels))
            channels = spec["channels"]
            height = (height + 2 * spec["padding"] - spec["kernel"]) // spec["stride"] + 1
            width = (width + 2 * spec["padding"] - spec["kernel"]) // spec["stride"] + 1
            height, width = height // spec["pool_size"], width // spec["pool_size"]
        self.flatten = torch.nn.Flatten()  # PyTorch's C x H x W order
        widths = [channels * height * width] + arch["hidden"] + [classes]
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b, dtype=torch.float32) for a, b in zip(widths, widths[1:]))
        self.image = image

    def forward(self, x):
        h = x.reshape(x.shape[0], self.image["channels"], self.image["height"], self.image["width"])
        for block in self.blocks:
            h = block(h)
        h = self.flatten(h)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i + 1 < len(self.layers):
                h = torch.relu(h)
        return h


def conv_net_case():
    # 2 x 19 x 22 (height != width at every stage, so a transposed map cannot pass):
    #   block 0: 3x3 conv, padding 1 -> 19 x 22, batch norm, 2x2 max pool -> 9 x 11 (floor drops row 19);
    #   block 1: 3x3 conv, stride 2, padding 1 -> 5 x 6 (stride divides 9+2-3 and 11+2-3, which candle's
    #            own conv2d backward needs), no batch norm, 2x2 avg pool -> 2 x 3 (floor drops row 5);
    #   head: 4*2*3 = 24 -> 6 (ReLU) -> 5.
    arch = {
        "kind": "conv",
        "blocks": [
            {"channels": 3, "kernel": 3, "stride": 1, "padding": 1, "batch_norm": True, "pool": "max", "pool_size": 2},
            {"channels": 4, "kernel": 3, "stride": 2, "padding": 1, "batch_norm": False, "pool": "avg", "pool_size": 2},
        ],
        "hidden": [6],
        "dropout": 0.0,
    }
    image = {"channels": 2, "height": 19, "width": 22}
    classes, batch = 5, 4
    g = torch.Generator().manual_seed(31415)

    def uniform(shape, low, high):
        return (torch.rand(*shape, generator=g, dtype=torch.float32) * (high - low) + low).float()

    net = ConvNet(arch, image, classes)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if ".bn." in name:
                low, high = {"weight": (0.5, 1.5), "bias": (-0.5, 0.5), "running_mean": (-0.3, 0.3),
                             "running_var": (0.5, 2.0)}[name.rsplit(".", 1)[1]]
            else:  # PyTorch's default bound, 1/sqrt(fan_in), for weights and biases alike
                owner = name.rsplit(".", 1)[0]
                fan_in = net.get_submodule(owner).weight[0].numel()
                low, high = -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)
            t.copy_(uniform(t.shape, low, high))
    tensors = {k: v.tolist() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(batch, image["channels"] * image["height"] * image["width"], generator=g).float()
    upstream = torch.randn(batch, classes, generator=g).float()

    ref = ConvNet(arch, image, classes)
    ref.load_state_dict(net.state_dict())
    ref = ref.double()
    ref.eval()
    with torch.no_grad():
        eval_logits = ref(x.double())
    ref.train()
    train_logits = ref(x.double())
    (train_logits * upstream.double()).sum().backward()
    buffers = {k: v.tolist() for k, v in ref.state_dict().items() if "running_" in k}
    grads = {k: p.grad.tolist() for k, p in ref.named_parameters()}
    assert set(grads) | set(buffers) == set(tensors)
    return {
        "generator": "scripts/make_fixtures.py",
        "torch": torch.__version__,
        "arch": arch,
        "image": image,
        "classes": classes,
        "tensors": tensors,
        "x": x.tolist(),
        "upstream": upstream.tolist(),
        "eval_logits": eval_logits.tolist(),
        "train_logits": train_logits.detach().tolist(),
        "running_after_train": buffers,
        "grads": grads,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    for file, data in [
        ("hinton_loss.json", loss_cases()),
        ("optimizers.json", optimizer_cases()),
        ("linear.json", linear_cases()),
        ("kd_losses.json", kd_loss_cases()),
        ("conv_net.json", conv_net_case()),
    ]:
        (OUT / file).write_text(json.dumps(data, indent=1) + "\n")
        print("wrote", OUT / file)


if __name__ == "__main__":
    main()
