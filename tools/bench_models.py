#!/usr/bin/env python3
"""Makes two model folders in layouts no packaged asset has, for `superlora bench --model`
(docs/BENCHMARKS.md, "DistilBERT and the Hugging Face ViT as one node per block"):

- OUT/distilbert: the MiniLM-L6 asset (real weights) rewritten as a Hugging Face DistilBERT. The
  two architectures differ only in names and in BERT's token-type embedding, which is folded into
  the position embeddings (every token has type 0 in MiniLM's use here), so the folder computes the
  same function; the script checks that transformers' DistilBertModel on it gives BertModel's
  last_hidden_state on the MiniLM folder (max abs difference printed, must be < 1e-4).
- OUT/vit: a Hugging Face ViT (`model_type` `vit`) with DINOv2-S/14's shapes (width 384, 12 layers,
  6 heads, FFN 1536, patch 14), random-init by transformers with seed 0: for timing only (no
  packaged asset holds a ViT in this layout; its accuracy means nothing).

    /tmp/venv-peft/bin/python tools/bench_models.py MINILM_DIR OUT
    superlora bench --model OUT/distilbert --targets q_lin,v_lin --configs lora-r8
    superlora bench --preset vit-fmnist --model OUT/vit --configs lora-r8

Needs torch, transformers and safetensors (tools/requirements-peft.txt has them).
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import BertModel, DistilBertConfig, DistilBertModel, ViTConfig, ViTModel


def distilbert(minilm: str, out: str) -> None:
    cfg = json.load(open(os.path.join(minilm, "config.json")))
    w = load_file(os.path.join(minilm, "model.safetensors"))
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    d = {
        "embeddings.word_embeddings.weight": w["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": w["embeddings.position_embeddings.weight"]
        + w["embeddings.token_type_embeddings.weight"][0],
        "embeddings.LayerNorm.weight": w["embeddings.LayerNorm.weight"],
        "embeddings.LayerNorm.bias": w["embeddings.LayerNorm.bias"],
    }
    names = {
        "attention.self.query": "attention.q_lin",
        "attention.self.key": "attention.k_lin",
        "attention.self.value": "attention.v_lin",
        "attention.output.dense": "attention.out_lin",
        "attention.output.LayerNorm": "sa_layer_norm",
        "intermediate.dense": "ffn.lin1",
        "output.dense": "ffn.lin2",
        "output.LayerNorm": "output_layer_norm",
    }
    for i in range(cfg["num_hidden_layers"]):
        for src, dst in names.items():
            for p in ("weight", "bias"):
                d[f"transformer.layer.{i}.{dst}.{p}"] = w[f"encoder.layer.{i}.{src}.{p}"]
    config = DistilBertConfig(
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        dim=cfg["hidden_size"],
        hidden_dim=cfg["intermediate_size"],
        activation="gelu",
        pad_token_id=cfg.get("pad_token_id", 0),
    )
    os.makedirs(out, exist_ok=True)
    config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in d.items()}, os.path.join(out, "model.safetensors"))
    for f in ("tokenizer.json", "vocab.txt"):
        if os.path.exists(os.path.join(minilm, f)):
            shutil.copy(os.path.join(minilm, f), out)
    # The check: the same hidden states as BERT on the original folder.
    ids = torch.tensor([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102], [101, 1996, 5436, 2003, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        a = BertModel.from_pretrained(minilm, add_pooling_layer=False).eval()(input_ids=ids, attention_mask=mask)
        b = DistilBertModel.from_pretrained(out).eval()(input_ids=ids, attention_mask=mask)
    diff = (a.last_hidden_state - b.last_hidden_state)[mask.bool()].abs().max().item()
    print(f"{out}: DistilBERT from MiniLM, max abs difference to BertModel {diff:.2e}")
    if diff >= 1e-4:
        sys.exit(f"{out}: the DistilBERT folder does not reproduce MiniLM ({diff})")


def vit(out: str) -> None:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        patch_size=14,
        image_size=224,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(out)
    print(f"{out}: random-init ViT-S/14 (timing only)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    distilbert(sys.argv[1], os.path.join(sys.argv[2], "distilbert"))
    vit(os.path.join(sys.argv[2], "vit"))
