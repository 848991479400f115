#!/usr/bin/env python3
"""Loads a model folder exported by Distillery with Hugging Face transformers, and checks it.

    python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers safetensors
    .venv/bin/python scripts/check_hf_export.py EXPORT_DIR "a text" "another text"
    .venv/bin/python scripts/check_hf_export.py EXPORT_DIR --embedding "a text"
    .venv/bin/python scripts/check_hf_export.py EXPORT_DIR --expect expected.json

EXPORT_DIR holds config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json). Without --embedding it
loads AutoModelForSequenceClassification and prints each text's predicted label (config.json's id2label) and its
probability; with --embedding it loads AutoModel and prints the attention-masked mean of the last hidden state
(the sentence embedding), its norm and first values.

--expect FILE: {"texts": [...], "logits": [[...], ...]} or {"texts": [...], "embeddings": [[...], ...]}, e.g.
what Distillery itself computed for those texts. The texts come from the file (texts on the command line are then
not allowed); the script exits 1 unless every value is within --tolerance (default 1e-4) of transformers' own.
Weights the folder lacks (which transformers would fill with random numbers) are an error too.
"""
import argparse
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=pathlib.Path, help="the exported Hugging Face folder")
    p.add_argument("texts", nargs="*", help="texts to run (default: the --expect file's, or two examples)")
    p.add_argument("--embedding", action="store_true", help="mean-pooled sentence embeddings instead of labels")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings (sentence-transformers)")
    p.add_argument("--expect", type=pathlib.Path, help="JSON with texts and the logits or embeddings to match")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    p.add_argument("--max-length", type=int, help="truncate to this many tokens (default: the model's limit)")
    return p.parse_intermixed_args()  # options may follow the texts


def max_length(config, tokenizer, asked):
    # RoBERTa-style models number positions from pad_token_id + 1, so they fit two fewer tokens.
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
    limits = [config.max_position_embeddings - offset]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1e9:  # unset: a huge sentinel
        limits.append(tokenizer.model_max_length)
    if asked:
        limits.append(asked)
    return min(limits)


def load(cls, folder, allowed_missing=()):
    model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(allowed_missing)]
    if missing:
        sys.exit(f"error: {folder}/model.safetensors lacks {len(missing)} weights transformers needs, e.g. "
                 f"{sorted(missing)[:5]}; they would be random")
    return model.eval()


def main():
    args = parse_args()
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (args.folder / f).is_file()]
    if missing:  # without tokenizer.json, AutoTokenizer may quietly build an empty tokenizer from config.json
        sys.exit(f"error: {args.folder} lacks {', '.join(missing)}")
    transformers.logging.set_verbosity_error()  # load() reports missing weights itself; extra ones are fine
    expected = None
    if args.expect:
        expected = json.loads(args.expect.read_text())
        key = "embeddings" if args.embedding else "logits"
        if key not in expected:
            sys.exit(f"error: {args.expect} has no {key!r}" + (" (pass --embedding?)" if "embeddings" in expected
                                                               else ""))
        if args.texts:
            sys.exit("error: with --expect the texts come from that file")
        texts = expected["texts"]
        if len(expected[key]) != len(texts):
            sys.exit(f"error: {args.expect} has {len(texts)} texts but {len(expected[key])} rows of {key}")
    else:
        texts = args.texts or ["This is a great product.", "This was a waste of money."]

    config = AutoConfig.from_pretrained(args.folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.folder, local_files_only=True)
    limit = max_length(config, tokenizer, args.max_length)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    print(f"{args.folder}: {config.model_type}, {type(tokenizer).__name__}, {len(texts)} texts, "
          f"{batch['input_ids'].shape[1]} tokens (limit {limit})")

    with torch.no_grad():
        if args.embedding:
            # A classification export also holds the classifier and maybe no pooler: neither is used here.
            model = load(AutoModel, args.folder, allowed_missing=("pooler.",))
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            values = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if args.normalize:
                values = F.normalize(values, dim=-1)
            for text, e in zip(texts, values):
                head = ", ".join(f"{v:+.4f}" for v in e[:4].tolist())
                print(f"  norm {e.norm().item():8.4f}  [{head}, ...]  {text!r}")
        else:
            model = load(AutoModelForSequenceClassification, args.folder)
            values = model(**batch).logits
            probs = values.softmax(-1)
            for text, p in zip(texts, probs):
                i = int(p.argmax())
                print(f"  {config.id2label.get(i, str(i)):>12} {p[i].item():.3f}  {text!r}")

    if expected is None:
        return
    want = torch.tensor(expected["embeddings" if args.embedding else "logits"], dtype=values.dtype)
    if want.shape != values.shape:
        sys.exit(f"FAIL: expected shape {tuple(want.shape)}, transformers gives {tuple(values.shape)}")
    diff = (want - values).abs()
    worst = diff.max().item()
    row, col = divmod(int(diff.argmax()), diff.shape[1])
    verdict = "OK" if worst < args.tolerance else "FAIL"
    print(f"{verdict}: max abs difference {worst:.3g} (text {row}, column {col}; tolerance {args.tolerance:g})")
    if verdict != "OK":
        sys.exit(1)


if __name__ == "__main__":
    main()
