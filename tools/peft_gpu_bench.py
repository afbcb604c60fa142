#!/usr/bin/env python3
"""PyTorch + PEFT side of tools/device-check.sh: LoRA r=8 training throughput on one CUDA GPU.

The setting of `superlora bench` (config 0): all-MiniLM-L6-v2 (the minilm asset, a BERT folder),
LoRA r=8 on query and value (alpha = r, so the scale is 1 like superlora's default, dropout 0), a
linear head on the mean-pooled sentence embedding, AdamW (adapter lr 1e-3, head lr 1e-2, no weight
decay), gradient clipping at 1.0, one fixed batch of `--batch-size` review texts that have at least
`--seq-len` tokens, truncated to `--seq-len`. Step times are taken after torch.cuda.synchronize();
the median of `--steps` timed steps after `--warmup` untimed ones. Prints one JSON object:
samples_per_s, median_step_ms, torch's max_memory_allocated and max_memory_reserved (MiB).

    python3 tools/peft_gpu_bench.py --model ASSETS/minilm --data ASSETS/rotten-tomatoes
"""

import argparse
import bz2
import csv
import glob
import json
import os
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer


def texts(data_dir, tokenizer, n, seq_len):
    """The first n review texts with at least seq_len tokens (with [CLS] and [SEP])."""
    paths = glob.glob(os.path.join(data_dir, "*.csv.bz2"))
    if not paths:
        sys.exit(f"no .csv.bz2 in {data_dir}")
    out = []
    with bz2.open(paths[0], "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("category") not in ("fresh", "rotten"):
                continue
            if len(tokenizer(row["text"])["input_ids"]) >= seq_len:
                out.append((row["text"], 1 if row["category"] == "fresh" else 0))
                if len(out) == n:
                    return out
    sys.exit(f"only {len(out)} texts with {seq_len} tokens")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # superlora's f32 matmuls are full f32
    torch.backends.cudnn.allow_tf32 = False
    tok = AutoTokenizer.from_pretrained(a.model)
    batch = texts(a.data, tok, a.batch_size, a.seq_len)
    enc = tok([t for t, _ in batch], truncation=True, max_length=a.seq_len, padding="max_length", return_tensors="pt")
    enc = {k: v.to(dev) for k, v in enc.items()}
    labels = torch.tensor([y for _, y in batch], device=dev)

    base = AutoModel.from_pretrained(a.model)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]))
    model.to(dev)
    head = torch.nn.Linear(base.config.hidden_size, 2).to(dev)
    opt = torch.optim.AdamW(
        [
            {"params": [q for q in model.parameters() if q.requires_grad], "lr": 1e-3, "weight_decay": 0.0},
            {"params": head.parameters(), "lr": 1e-2, "weight_decay": 0.0},
        ]
    )
    torch.cuda.reset_peak_memory_stats()
    times = []
    for s in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], 1.0)
        opt.step()
        torch.cuda.synchronize()
        if s >= a.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "samples_per_s": a.batch_size / med,
                "median_step_ms": med * 1e3,
                "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "max_memory_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
            }
        )
    )


if __name__ == "__main__":
    main()
