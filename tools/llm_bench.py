#!/usr/bin/env python3
"""Decoder-LLM throughput, ours against PyTorch + PEFT, in one run: SmolLM2-135M (the GGUF, which
both sides dequantize to f32), LoRA of rank R on q_proj and v_proj, AdamW, the same batch of B
chunks of L tokens, the same thread count.

- training: tokens predicted per second over --steps optimizer steps (after --warmup untimed ones
  on the PyTorch side; ours reports its own rate over the run in summary.json), and peak RSS;
- generation: greedy decoding of --new tokens after a short prompt with a KV cache, tokens/s.

Ours runs as the `superlora` binary (`train --task causal-lm`, `generate`), PyTorch in this process
after ours finished. Prints one table with the ratio ours / PyTorch. The machine's other load
changes both numbers: run it on a quiet machine, and say so when it was not.

Usage (the venv of tools/requirements-peft-llama.txt):
    /tmp/peft-llama-venv/bin/python tools/llm_bench.py --superlora target/release/superlora \
        [--batch 8 --len 128 --steps 5 --rank 8 --threads 2 --new 64]
"""

import argparse
import json
import os
import re
import resource
import subprocess
import tempfile
import time

CACHE = os.environ.get("SUPERLORA_CACHE", os.path.expanduser("~/.cache/superlora"))
GGUF = os.path.join(CACHE, "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = "The lighthouse keeper wrote in his log that"
WORDS = ("the keeper counted lamp oil twice a day because the light could not go dark and a ship that "
         "missed the reef by a mile would strike it in the fog so he wrote the weather down").split()


def corpus(n_words):
    return " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(n_words))


def ours(a, text_path, out):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.superlora, "train", "--task", "causal-lm", "--model", a.gguf, "--data", text_path,
           "--max-len", str(a.len), "--batch-size", str(a.batch), "--steps", str(a.steps),
           "--eval-every", str(a.steps), "--eval-limit", "1", "--final-eval-limit", "1",
           "--rank", str(a.rank), "--no-progress", "--out", out]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    g = subprocess.run([a.superlora, "generate", "--model", a.gguf, "--max-tokens", str(a.new), PROMPT],
                       check=True, env=env, capture_output=True, text=True)
    gen = float(re.search(r"([0-9.]+) tokens/s", g.stderr).group(1))
    return s["tokens_per_s"], gen, s["peak_rss_mb"]


def pytorch(a, text):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=["q_proj", "v_proj"]))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + a.len] for i in range(0, len(ids) - a.len, a.len)]
    batch = torch.tensor(chunks[:a.batch])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    train = a.steps * a.batch * (a.len - 1) / (time.perf_counter() - t0)

    model.eval()
    prompt = torch.tensor([tok(PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        # One untimed short generation first, so that one-time set-up is not counted.
        model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        gen = (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return train, gen, rss, torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--superlora", required=True)
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()
    # Enough text for the training chunks and held-out ones.
    text = corpus(a.len * (a.batch * 2 + 8))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "text.txt")
        with open(p, "w") as fh:
            fh.write(text)
        o_train, o_gen, o_rss = ours(a, p, os.path.join(d, "run"))
    t_train, t_gen, t_rss, tv = pytorch(a, text)
    print("SmolLM2-135M f32, LoRA r=%d on q_proj,v_proj, batch %d x %d tokens, %d steps, %d threads"
          % (a.rank, a.batch, a.len, a.steps, a.threads))
    print("| | superlora | PyTorch %s + PEFT | ratio |" % tv)
    print("|---|---|---|---|")
    print("| training, tokens/s | %.0f | %.0f | %.2f |" % (o_train, t_train, o_train / t_train))
    print("| generation (greedy, KV cache), tokens/s | %.1f | %.1f | %.2f |" % (o_gen, t_gen, o_gen / t_gen))
    print("| peak RSS, MB | %.0f | %.0f | %.2f |" % (o_rss, t_rss, o_rss / t_rss))


if __name__ == "__main__":
    main()
