#!/usr/bin/env python3
"""Makes the tiny Hugging Face model fixtures of crates/superlora-models/tests/fixtures.

Each fixture is a random-init model built by real `transformers` from an explicit config (nothing
is downloaded), saved with `save_pretrained` (config.json + model.safetensors), plus for text
models a tokenizer.json made here with the `tokenizers` library (roberta: byte-level BPE trained
on a few sentences, RobertaProcessing; distilbert: WordPiece over the same sentences' words and
characters, BertProcessing), and `golden.safetensors`: the
fixed inputs fed (ids/mask/token types, or pixel values) and transformers' `last_hidden_state`
(images also the pooled features superlora's ImageEncoder returns, and the same at a second input
size, which exercises the bicubic position-embedding interpolation). Seeds are fixed, so a rerun
with the pinned versions (tools/requirements-fixtures.txt) reproduces the files; SHA256SUMS lists
them.

    python3 -m venv /tmp/fixvenv && /tmp/fixvenv/bin/pip install -r tools/requirements-fixtures.txt
    /tmp/fixvenv/bin/python tools/make_tiny_models.py
"""

import hashlib
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DistilBertConfig,
    DistilBertModel,
    Dinov2Config,
    Dinov2Model,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "superlora-models", "tests", "fixtures")

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
    "This film is a gripping, beautifully acted drama.",
    "The plot is thin and the jokes fall flat.",
    "Low-rank adapters fine-tune large models cheaply.",
    "Every weight update is one vector cut into groups.",
    "The cat sat on the mat while the dog slept.",
]
SENTENCES = ["A man is eating food.", "The plot is thin, the film is not!", "Adapters fine-tune models."]


def randomize(model, seed):
    """Every parameter random (HF init leaves biases at 0 and LayerNorm at 1, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if ("norm" in name.lower() and name.endswith("weight")) or "lambda1" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    model.eval()
    return model


def fresh(name):
    d = os.path.join(ROOT, f"tiny-{name}")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def encode(tok, pad_id):
    enc = tok.encode_batch(SENTENCES)
    n = max(len(e.ids) for e in enc)
    ids = [e.ids + [pad_id] * (n - len(e.ids)) for e in enc]
    mask = [[1] * len(e.ids) + [0] * (n - len(e.ids)) for e in enc]
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(mask, dtype=torch.int64)


def save_golden(d, tensors, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "golden.safetensors"), metadata=meta)


def roberta():
    d = fresh("roberta")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3, 4]
    tok.save(os.path.join(d, "tokenizer.json"))
    torch.manual_seed(1)
    cfg = RobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )
    cfg._attn_implementation = "eager"
    m = randomize(RobertaModel(cfg, add_pooling_layer=False), 11)
    m.save_pretrained(d)
    ids, mask = encode(tok, 1)
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    save_golden(d, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "last_hidden_state": h},
                {"sentences": json.dumps(SENTENCES)})


def distilbert():
    d = fresh("distilbert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def bare(model):
        t = Tokenizer(model)
        t.normalizer = normalizers.BertNormalizer(lowercase=True)
        t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        t.decoder = decoders.WordPiece()
        return t

    # The vocabulary comes from the corpus through the library's own normaliser and pre-tokenizer:
    # every word, every character and every continuation character. (WordPieceTrainer numbers
    # continuation tokens in hash order and breaks ties with those numbers, so its vocabulary
    # changes from run to run; this one is the same on every run.)
    probe = bare(models.WordPiece(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    words = set()
    for line in CORPUS:
        for w, _ in probe.pre_tokenizer.pre_tokenize_str(probe.normalizer.normalize_str(line)):
            words.add(w)
    chars = {c for w in words for c in w}
    rest = sorted(words | chars | {"##" + c for c in chars})
    tok = bare(models.WordPiece(vocab={t: i for i, t in enumerate(specials + rest)}, unk_token="[UNK]"))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3, 4]
    tok.save(os.path.join(d, "tokenizer.json"))
    torch.manual_seed(2)
    cfg = DistilBertConfig(
        vocab_size=tok.get_vocab_size(),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
        activation="gelu",
        sinusoidal_pos_embds=False,
    )
    cfg._attn_implementation = "eager"
    m = randomize(DistilBertModel(cfg), 12)
    m.save_pretrained(d)
    ids, mask = encode(tok, 0)
    with torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask).last_hidden_state
    save_golden(d, {"input_ids": ids, "attention_mask": mask, "last_hidden_state": h},
                {"sentences": json.dumps(SENTENCES)})


def images(d, m, pool, vit):
    g = torch.Generator().manual_seed(7)
    out = {}
    for suffix, size in (("", 16), ("_24", 24)):
        x = torch.randn((2, 3, size, size), generator=g, dtype=torch.float32)
        with torch.no_grad():
            kw = {"interpolate_pos_encoding": True} if vit and size != 16 else {}
            h = m(pixel_values=x, **kw).last_hidden_state
        out[f"pixel_values{suffix}"] = x
        out[f"last_hidden_state{suffix}"] = h
        out[f"features{suffix}"] = pool(h)
    save_golden(d, out, {})


def vit():
    d = fresh("vit")
    torch.manual_seed(3)
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        qkv_bias=True,
    )
    cfg._attn_implementation = "eager"
    m = randomize(ViTModel(cfg, add_pooling_layer=False), 13)
    m.save_pretrained(d)
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "ViTImageProcessor", "do_normalize": True, "do_resize": True,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 16, "width": 16}},
                  f, indent=2)
    images(d, m, lambda h: h[:, 0], vit=True)


def dinov2():
    d = fresh("dinov2")
    torch.manual_seed(4)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=16,
        patch_size=4,
        num_channels=3,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )
    cfg._attn_implementation = "eager"
    m = randomize(Dinov2Model(cfg), 14)
    m.save_pretrained(d)
    images(d, m, lambda h: torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1), vit=False)


def sha256sums():
    lines = []
    for dirpath, _, files in sorted(os.walk(ROOT)):
        for f in sorted(files):
            if f == "SHA256SUMS":
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                lines.append(f"{hashlib.sha256(fh.read()).hexdigest()}  {os.path.relpath(p, ROOT)}")
    with open(os.path.join(ROOT, "SHA256SUMS"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main():
    torch.set_num_threads(1)
    os.makedirs(ROOT, exist_ok=True)
    roberta()
    distilbert()
    vit()
    dinov2()
    sha256sums()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(ROOT) for f in fs)
    print(f"fixtures in {os.path.normpath(ROOT)}: {total / 1e6:.2f} MB", file=sys.stderr)
    assert total <= 2_000_000, "fixtures must stay under 2 MB"


if __name__ == "__main__":
    main()
