#!/usr/bin/env python3
"""Writes a tiny random Llama, its GGUF copy and the references the Rust tests compare against.

    python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers safetensors gguf accelerate
    .venv/bin/python scripts/make_llm_fixtures.py [--smollm2 PATH.gguf]

Outputs (committed; CI only reads them):
  tests/fixtures/tiny-llama/       LlamaForCausalLM: config.json, model.safetensors, tokenizer.json (byte-level
                                   BPE trained here, digits split one by one as SmolLM2's are); vocab ~300, hidden 32,
                                   2 layers, 4 heads with 2 key/value heads, intermediate 48, tied embeddings
  tests/fixtures/tiny-llama.gguf   the same weights and tokenizer as llama.cpp's converter lays them out (F32,
                                   query/key rows permuted, llama.cpp's names, tokenizer in the metadata)
  tests/fixtures/llama.json        {"input_ids": [2][10], "logits": T [2, 10, V], "hidden_states": T [3, 2, 10, 32],
                                    "loss": next-token cross-entropy (transformers' `labels` loss),
                                    "grads": {name: T} d loss / d parameter,
                                    "tokenizer": [{"text", "ids"}] from tokenizer.json,
                                    "kd": {"student", "teacher": T [2, 6, V], "mask": [2][6], "temperature",
                                           "beta", "top_k", "forward_kl", "reverse_kl", "jsd" (full vocabulary),
                                           "top_k_forward_kl", "top_k_reverse_kl", "top_k_jsd" (both models over
                                           k + 1 outcomes: the teacher's top k tokens and one bucket for the rest)}}
  tests/fixtures/smollm2.json      with --smollm2: the real SmolLM2-135M-Instruct GGUF loaded by transformers
                                   (its own dequantisation and tokenizer): a text's ids, its perplexity and the
                                   last position's top-5 logits
where T = {"shape": [...], "data": [row-major floats]}. References are computed in float64 from the float32
weights, eager attention.
"""
import argparse
import json
import pathlib

import gguf
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
ROPE_THETA = 10000.0
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "A fool and his money are soon parted.",
    "The early bird catches the worm, but the second mouse gets the cheese.",
    "In 1969, 2 people walked on the moon; 384400 km away.",
    "Never put off until tomorrow what you can do the day after tomorrow.",
    "To err is human, to forgive divine, to really foul things up takes a computer.",
]
CASES = ["A fool and his money.", "The 2nd mouse gets 42 cheeses!", "<|im_start|>user hi<|im_end|>", "  spaced  out\nlines"]


def tensor(t):
    t = t.detach().to(torch.float64)
    return {"shape": list(t.shape), "data": [round(float(v), 9) for v in t.flatten()]}


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def make_model(vocab):
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def llama_cpp_permute(w, heads):
    # As llama.cpp's convert_hf_to_gguf.py lays out query and key rows: interleaved rotary pairs.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path):
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(ROPE_THETA)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(c.bos_token_id)
    writer.add_eos_token_id(c.eos_token_id)
    names = {
        "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for name, p in model.state_dict().items():
        w = p.detach().to(torch.float32)
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            continue  # tied: llama.cpp stores no output layer
        else:
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            out = f"blk.{layer}.{names[part]}"
            if part == "self_attn.q_proj.weight":
                w = llama_cpp_permute(w, c.num_attention_heads)
            if part == "self_attn.k_proj.weight":
                w = llama_cpp_permute(w, c.num_key_value_heads)
        writer.add_tensor(out, w.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def kd_losses(rng_seed, vocab):
    g = torch.Generator().manual_seed(rng_seed)
    student = torch.randn(2, 6, vocab, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(2, 6, vocab, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 0, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    t, beta, k = 2.0, 0.3, 8

    def divergences(log_t, log_s):
        n = log_s.shape[0]
        forward = (log_t.exp() * (log_t - log_s)).sum() / n * t * t
        reverse = (log_s.exp() * (log_s - log_t)).sum() / n * t * t
        log_m = torch.logsumexp(torch.stack([log_t + np.log(beta), log_s + np.log(1 - beta)]), 0)
        jsd = (beta * (log_t.exp() * (log_t - log_m)).sum()
               + (1 - beta) * (log_s.exp() * (log_s - log_m)).sum()) / n * t * t
        return forward, reverse, jsd

    s, te = student[mask] / t, teacher[mask] / t
    full = divergences(F.log_softmax(te, -1), F.log_softmax(s, -1))
    # Top k: both distributions over k + 1 outcomes, the teacher's k likeliest tokens and one
    # bucket for all the others (its probability exact: the rest's logsumexp at T).
    top = teacher[mask].topk(k, -1).indices

    def coarse(scaled):
        rest = scaled.scatter(-1, top, float("-inf")).logsumexp(-1, keepdim=True)
        return F.log_softmax(torch.cat([scaled.gather(-1, top), rest], -1), -1)

    cached = divergences(coarse(te), coarse(s))
    return {
        "student": tensor(student), "teacher": tensor(teacher), "mask": mask.int().tolist(), "temperature": t,
        "beta": beta, "top_k": k, "forward_kl": float(full[0]), "reverse_kl": float(full[1]), "jsd": float(full[2]),
        "top_k_forward_kl": float(cached[0]), "top_k_reverse_kl": float(cached[1]), "top_k_jsd": float(cached[2]),
    }


def references(model, tok):
    ids = torch.tensor([tok.encode(CORPUS[1]).ids[:10], tok.encode(CORPUS[2]).ids[:10]])
    model64 = LlamaForCausalLM(model.config).eval().to(torch.float64)
    model64.load_state_dict(model.state_dict())
    out = model64(input_ids=ids, labels=ids, output_hidden_states=True)
    out.loss.backward()
    params = dict(model64.named_parameters())
    grads = {n: tensor(params[n].grad) for n in [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]}
    # transformers' last hidden state is after the final norm; the engine's is before it.
    hidden = torch.stack(out.hidden_states[:-1])
    return {
        "generator": "scripts/make_llm_fixtures.py", "torch": torch.__version__, "transformers": transformers.__version__,
        "input_ids": ids.tolist(), "logits": tensor(out.logits), "hidden_states": tensor(hidden),
        "loss": float(out.loss), "grads": grads,
        "tokenizer": [{"text": text, "ids": tok.encode(text).ids} for text in CASES + CORPUS[:2]],
        "kd": kd_losses(7, model.config.vocab_size),
    }


def smollm2(path):
    folder, name = str(pathlib.Path(path).parent), pathlib.Path(path).name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    text = "Never put off until tomorrow what you can do the day after tomorrow. A fool and his money are soon parted."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    loss = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    top = logits[-1].topk(5)
    return {"generator": "scripts/make_llm_fixtures.py --smollm2", "transformers": transformers.__version__,
            "text": text, "ids": ids, "perplexity": float(loss.exp()),
            "last_top5_ids": top.indices.tolist(), "last_top5_logits": [float(v) for v in top.values]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", help="the SmolLM2-135M-Instruct GGUF (scripts/fetch-smollm2.sh)")
    args = parser.parse_args()
    tok = make_tokenizer()
    model = make_model(tok.get_vocab_size())
    folder = OUT / "tiny-llama"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ["generation_config.json"]:
        (folder / extra).unlink(missing_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    write_gguf(model, tok, OUT / "tiny-llama.gguf")
    (OUT / "llama.json").write_text(json.dumps(references(model, tok)) + "\n")
    if args.smollm2:
        (OUT / "smollm2.json").write_text(json.dumps(smollm2(args.smollm2), indent=1) + "\n")


if __name__ == "__main__":
    main()
