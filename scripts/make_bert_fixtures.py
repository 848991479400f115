#!/usr/bin/env python3
"""Writes tiny random BERT-family models and the Hugging Face reference outputs the Rust tests compare against.

    python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers safetensors
    .venv/bin/python scripts/make_bert_fixtures.py

Outputs (committed; CI only reads them):
  tests/fixtures/tiny-bert/        BertForSequenceClassification: config.json, model.safetensors, tokenizer.json
                                   (+ tokenizer_config.json, special_tokens_map.json so AutoTokenizer loads it);
                                   vocab 150, hidden 32, 3 layers, 4 heads, intermediate 64, 64 positions,
                                   2 token types, 3 labels (neg, neu, pos), exact (erf) gelu, LayerNorm eps 1e-12
  tests/fixtures/tiny-roberta/     RobertaForSequenceClassification: config.json, model.safetensors; vocab 150,
                                   hidden 32, 2 layers, 4 heads, intermediate 64, 66 positions (pad 1, so positions
                                   start at 2), 1 token type, LayerNorm eps 1e-5, 3 labels
  tests/fixtures/tiny-distilbert/  DistilBertForSequenceClassification: config.json, model.safetensors; vocab 150,
                                   dim 32, 2 layers, 4 heads, hidden_dim 64, 64 positions, 3 labels
  tests/fixtures/bert.json         {"generator", "torch", "transformers", "tokenizers",
                                    "models": {"tiny-bert" | "tiny-roberta" | "tiny-distilbert": {
                                      "folder":          path from the repository root,
                                      "input_ids", "attention_mask", "token_type_ids":  [3][12] ints (right padded
                                                         in rows 1 and 2; DistilBERT takes no token_type_ids: zeros),
                                      "logits":          T [3, 3],
                                      "hidden_states":   T [layers + 1, 3, 12, 32] (index 0: embeddings output),
                                      "attentions":      T [layers, 3, heads, 12, 12] (softmax probabilities),
                                      "mean_pooled":     T [3, 32] (last hidden state averaged where mask = 1),
                                      tiny-bert only:
                                      "labels": [0, 2, 1], "loss": mean cross-entropy of the logits,
                                      "grads": {parameter name: T} d loss / d parameter for nine parameters}},
                                    "tokenizer": {"max_length": 12, "truncation": "longest_first",
                                      "padding": "max_length", "cases": [{"text", "pair" (or null), "tokens",
                                      "ids", "type_ids", "attention_mask"}]}}
                                   where T = {"shape": [...], "data": [row-major floats]}.

Weights are float32 (what the engine runs in, and what model.safetensors holds); references are computed in
float64 from them, in eval mode (no dropout), eager attention. Every weight is redrawn with a large spread
(LayerNorm gains around 1, biases nonzero) so that a missing or misplaced op shows in the numbers.
"""
import json
import pathlib
import re

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
SEQ = 12
ID2LABEL = {0: "neg", 1: "neu", 2: "pos"}

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = [".", ",", "!", "?", "'", ";", ":", "-", "(", ")"]
WORDS = """
the a an and or but not no is are was were be been it this that i you he she we they me my your of to in on at
for with from by as about than then so very really just too even good great bad terrible fine okay movie film
book story plot actor act music food place service price time day night year love like hate enjoy bore fun sad
happy dull slow fast long short old new best worst more most less people woman dog work play read watch see go
come make take get give think know feel say want money back agree well how what why yes cafe far high
""".split()
PIECES = ["##s", "##ed", "##d", "##ing", "##ly", "##er", "##est", "##y", "##ful", "##ness", "##able", "##al",
          "##ion", "##ive", "##ish", "##less", "##ity", "##ment"]
VOCAB = SPECIAL + PUNCT + WORDS + PIECES
assert len(VOCAB) == len(set(VOCAB)) == 150, len(VOCAB)


def tiny_tokenizer():
    """BERT's uncased WordPiece pipeline over VOCAB, as the tokenizers library writes tokenizer.json."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    # strip_accents=None follows lowercase, as in bert-base-uncased: "CAFÉ" -> "cafe".
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL)  # so "[SEP]" typed in a text stays one token, as with HF's own files
    return tok


TOKENIZER_CASES = [
    ("The movie was great!", None),
    ("I REALLY hated the boring plot.", None),  # uppercase; hate ##d, bore ##ing
    ("Zyxx is a word nobody knows", None),  # zyxx, word, nobody: out of vocabulary -> [UNK]
    ("Well, the food was okay; the service, however, was slow and the prices were far too high.", None),
    ("CAFÉ (the old one)", None),  # accent stripped by the lowercasing normalizer
    ("Is the film good?", "Yes, very good."),
    ("The acting was terrible and the story was even worse than the book.",
     "I agree; it was the worst movie of the year!"),  # both too long: longest_first trims the longer side first
    ("Really?", "The music was fine but the long slow plot made the night feel longer and longer."),
]


def encode_cases(tok):
    tok.enable_truncation(SEQ, strategy="longest_first")
    tok.enable_padding(length=SEQ, pad_id=0, pad_token="[PAD]")
    cases = []
    for text, pair in TOKENIZER_CASES:
        e = tok.encode(text, pair) if pair is not None else tok.encode(text)
        cases.append({"text": text, "pair": pair, "tokens": e.tokens, "ids": e.ids, "type_ids": e.type_ids,
                      "attention_mask": e.attention_mask})
    tok.no_truncation()
    tok.no_padding()
    return {"max_length": SEQ, "truncation": "longest_first", "padding": "max_length", "cases": cases}


def randomise(model, g):
    """Redraws every parameter: weights N(0, 0.2^2), biases N(0, 0.2^2), LayerNorm gains 1 + N(0, 0.3^2)."""
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                # Embedding rows too, pad's included: HF zeroes it at init, but a checkpoint need not.
                module.weight.copy_(0.2 * torch.randn(module.weight.shape, generator=g))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
    return model


def tensor(t):
    # 8 significant digits: far below float32 noise, and keeps bert.json small.
    return {"shape": list(t.shape), "data": [float(f"{v:.8g}") for v in t.detach().flatten().tolist()]}


def reference(cls, folder, inputs, labels=None, grad_names=()):
    """Reloads the saved folder (so the safetensors round trip is part of the check) and runs it in float64."""
    model = cls.from_pretrained(folder, attn_implementation="eager").double().eval()
    kwargs = {k: torch.tensor(v) for k, v in inputs.items()}
    if cls is DistilBertForSequenceClassification:
        del kwargs["token_type_ids"]
    out = model(**kwargs, output_hidden_states=True, output_attentions=True)
    mask = kwargs["attention_mask"].unsqueeze(-1).double()
    pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    result = {
        "folder": str(folder.relative_to(ROOT)),
        **inputs,
        "logits": tensor(out.logits),
        "hidden_states": tensor(torch.stack(out.hidden_states)),
        "attentions": tensor(torch.stack(out.attentions)),
        "mean_pooled": tensor(pooled),
    }
    if labels is not None:
        loss = F.cross_entropy(out.logits, torch.tensor(labels))
        loss.backward()
        params = dict(model.named_parameters())
        result.update(labels=labels, loss=loss.item(),
                      grads={name: tensor(params[name].grad) for name in grad_names})
    return result


def save(model, folder, tok=None):
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").chmod(0o644)  # transformers writes it 0600 (via a temp file)
    if tok is not None:
        tok.save(str(folder / "tokenizer.json"))
        specials = dict(zip(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"], SPECIAL))
        # tokenizer_class PreTrainedTokenizerFast: AutoTokenizer then reads tokenizer.json as is (no vocab.txt).
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": True, "model_max_length": 64,
                  "model_input_names": ["input_ids", "token_type_ids", "attention_mask"], **specials}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def padded(rows, pad):
    return {
        "input_ids": [r + [pad] * (SEQ - len(r)) for r in rows],
        "attention_mask": [[1] * len(r) + [0] * (SEQ - len(r)) for r in rows],
    }


def main():
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)  # transformers' own init draws from it; randomise() then overwrites every parameter
    g = torch.Generator().manual_seed(20181011)  # BERT's arXiv date
    common = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                  initializer_range=0.2, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})

    # --- tiny-bert, its tokenizer, and inputs that come from that tokenizer
    tok = tiny_tokenizer()
    bert_dir = OUT / "tiny-bert"
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, **common))
    save(randomise(bert, g), bert_dir, tok)
    tokenizer_section = encode_cases(tok)
    # Row 0: a truncated pair filling all 12 slots (token types 0 and 1); rows 1 and 2: padded single texts.
    picked = [tokenizer_section["cases"][i] for i in (6, 0, 1)]
    assert sum(picked[0]["attention_mask"]) == SEQ and all(sum(c["attention_mask"]) < SEQ for c in picked[1:])
    bert_inputs = {"input_ids": [c["ids"] for c in picked], "attention_mask": [c["attention_mask"] for c in picked],
                   "token_type_ids": [c["type_ids"] for c in picked]}
    grad_names = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.1.attention.output.dense.bias",
        "bert.encoder.layer.2.output.dense.weight",
        "bert.encoder.layer.2.output.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ]

    # --- tiny-roberta: <s>=0, <pad>=1, </s>=2; body ids avoid all three.
    roberta_dir = OUT / "tiny-roberta"
    roberta = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, **common))
    save(randomise(roberta, g), roberta_dir)
    rows = [[0] + torch.randint(3, len(VOCAB), (n - 2,), generator=g).tolist() + [2] for n in (SEQ, 9, 5)]
    roberta_inputs = {**padded(rows, 1), "token_type_ids": [[0] * SEQ for _ in rows]}

    # --- tiny-distilbert: same ids as tiny-bert (same vocabulary), no token types.
    distil_dir = OUT / "tiny-distilbert"
    distil = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
        activation="gelu", dropout=0.1, attention_dropout=0.1, seq_classif_dropout=0.2, initializer_range=0.2,
        sinusoidal_pos_embds=False, pad_token_id=0, num_labels=3, id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()}))
    save(randomise(distil, g), distil_dir)
    distil_inputs = {**{k: bert_inputs[k] for k in ("input_ids", "attention_mask")},
                     "token_type_ids": [[0] * SEQ for _ in range(3)]}

    torch.set_default_dtype(torch.float64)
    data = {
        "generator": "scripts/make_bert_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "models": {
            "tiny-bert": reference(BertForSequenceClassification, bert_dir, bert_inputs, [0, 2, 1], grad_names),
            "tiny-roberta": reference(RobertaForSequenceClassification, roberta_dir, roberta_inputs),
            "tiny-distilbert": reference(DistilBertForSequenceClassification, distil_dir, distil_inputs),
        },
        "tokenizer": tokenizer_section,
    }
    text = json.dumps(data, indent=1)
    # Innermost number lists on one line each: the file stays small and the structure stays readable.
    text = re.sub(r"\[([-+0-9.eE,\s]+)\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    (OUT / "bert.json").write_text(text + "\n")
    for path in (bert_dir, roberta_dir, distil_dir, OUT / "bert.json"):
        print("wrote", path)


if __name__ == "__main__":
    main()
