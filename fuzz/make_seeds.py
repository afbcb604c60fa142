#!/usr/bin/env python3
"""Writes fuzz seeds for the adapter_loader target: `[u16 LE n][config][tensors]` from adapter
folders given on the command line (e.g. runs/<run>/adapter), plus two tiny hand-made adapters
(weight-wise LoRA r=1 with a head; square-fold Tucker + fastfood with saved projections is left to
real folders). Needs only the standard library.

    python3 fuzz/make_seeds.py fuzz/corpus/adapter_loader [ADAPTER_DIR ...]
"""
import json, os, struct, sys


def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def seed(config, tensor_bytes):
    c = config if isinstance(config, bytes) else json.dumps(config).encode()
    return struct.pack("<H", len(c)) + c + tensor_bytes


def tiny():
    cfg = {
        "format": "superlora-adapter", "format_version": 1,
        "adapter": {"fold": "natural", "groups": None, "order": 2, "factorization": {"kind": "lora", "rank": 1},
                    "projection": {"kind": "identity"}, "scale": 1.0, "seed": 0},
        "targets": [{"name": "a.q", "rows": 4, "cols": 3}, {"name": "a.v", "rows": 4, "cols": 3}],
        "rules": {"kronecker_side_split": "x", "rng": "x", "lora_factors": "x"},
        "base_model": {"kind": "bert", "path": "m", "sha256": "00"},
        "head": {"features": 2, "classes": ["a", "b"]},
        "trainable_params": 14, "head_params": 6, "projection_saved": False, "task": {},
    }
    t = {
        "group.0.lora_a": ("F32", [4, 1], f32([0.1, 0.2, 0.3, 0.4])),
        "group.0.lora_b": ("F32", [3, 1], f32([1, 2, 3])),
        "group.1.lora_a": ("F32", [4, 1], f32([0, 0, 0, 1])),
        "group.1.lora_b": ("F32", [3, 1], f32([1, 0, 1])),
        "head.weight": ("F32", [2, 2], f32([1, 0, 0, 1])),
        "head.bias": ("F32", [2], f32([0, 0])),
    }
    yield "tiny-lora", seed(cfg, safetensors(t))
    cfg2 = dict(cfg, adapter=dict(cfg["adapter"], fold="square", groups=2, order=3,
                                   factorization={"kind": "tucker", "rank": 1},
                                   projection={"kind": "fastfood", "ratio": 0.5}), head=None,
                trainable_params=0, head_params=0)
    yield "tiny-tucker-fastfood", seed(cfg2, safetensors({}))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, s in tiny():
        open(os.path.join(out, name), "wb").write(s)
    for d in sys.argv[2:]:
        c = open(os.path.join(d, "adapter_config.json"), "rb").read()
        t = open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
        name = os.path.basename(os.path.normpath(os.path.dirname(os.path.normpath(d)))) or "adapter"
        open(os.path.join(out, name), "wb").write(seed(c, t))
    print(f"seeds in {out}: {sorted(os.listdir(out))}")


if __name__ == "__main__":
    main()
