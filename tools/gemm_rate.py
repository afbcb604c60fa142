#!/usr/bin/env python3
"""PyTorch's side of `cargo run --release -p superlora-models --example gemm_rate`: f32 matmul
throughput on one thread for a MiniLM step's shapes, forward (x·Wᵀ) and backward (∂y·W)."""
import time

import torch

torch.set_num_threads(1)


def rate(a, b, flops):
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    ts.sort()
    return flops / ts[len(ts) // 2] / 1e9


for m in (1024, 512):
    for k, n in ((384, 384), (384, 1536), (1536, 384)):
        x, w, g = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        f = 2.0 * m * k * n
        print(f"M {m:>4} K {k:>4} N {n:>4}: x·Wᵀ {rate(x, w.t(), f):6.1f} GFLOP/s, ∂y·W {rate(g, w, f):6.1f} GFLOP/s")
