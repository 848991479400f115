#!/usr/bin/env python3
"""Loads a causal LM exported by Distillery (`student-hf.tar` or its folder) with transformers, and checks it.

    python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers safetensors
    .venv/bin/python scripts/check_llm_export.py JOB_DIR

JOB_DIR is the job's folder: student-hf.tar (unpacked here into a temporary folder) and report.json. The script
loads LlamaForCausalLM and AutoTokenizer from the export, reports any weight transformers had to initialise (an
error), then for every sample of report.json's `language_model.samples` tokenises the prompt, continues it greedily
as many tokens as Distillery did (report.json's `max_new_tokens`), and checks that the decoded text equals the student's continuation in the
report. Exits 1 unless every continuation is the same, so the exported weights, config and tokenizer are exactly
what the job trained and scored.
"""
import json
import pathlib
import sys
import tarfile
import tempfile

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM


def main():
    job = pathlib.Path(sys.argv[1])
    report = json.loads((job / "report.json").read_text())
    samples = report["language_model"]["samples"]
    max_new_tokens = report["language_model"]["max_new_tokens"]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(job / "student-hf.tar") as tar:
            tar.extractall(tmp, filter="data")
        folder = pathlib.Path(tmp) / "student-hf"
        model, info = LlamaForCausalLM.from_pretrained(folder, output_loading_info=True, torch_dtype=torch.float32)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        eos = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
        if info["missing_keys"]:
            print(f"weights transformers had to initialise: {info['missing_keys']}")
            return 1
        print(f"transformers {transformers.__version__}: {model.config.num_hidden_layers} layers, "
              f"{sum(p.numel() for p in model.parameters())} parameters")
        failures = 0
        for sample in samples:
            ids = tokenizer(sample["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                                     pad_token_id=model.config.eos_token_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
            # Distillery stops at the end-of-sequence token; transformers was told to go on.
            expected = sample["student"]
            same = text == expected or (expected.endswith(eos) and text.startswith(expected))
            failures += not same
            print(f"{'same' if same else 'DIFFERENT'}: {sample['prompt']!r} → {text!r}")
            if not same:
                print(f"  Distillery: {sample['student']!r}")
        print(f"{len(samples) - failures} of {len(samples)} continuations as Distillery generated them")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
