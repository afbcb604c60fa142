#!/usr/bin/env python3
"""Checks a `superlora export --format peft` adapter of a Llama model (SmolLM2-135M GGUF) against
Hugging Face PEFT: transformers loads the GGUF (dequantized to an f32 LlamaForCausalLM), PEFT applies
the exported adapter (keys `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), and the
per-token next-token log-probabilities of a fixed text are compared with ours
(`superlora generate --adapter DIR --logprobs FILE TEXT`). Also compares the base models (no adapter),
and checks that the adapter changes the log-probabilities by much more than the tolerance (a check
that an ignored adapter would pass proves nothing).

Usage (a throwaway venv; versions pinned in tools/requirements-peft-llama.txt):
    python3 -m venv /tmp/peft-llama-venv
    /tmp/peft-llama-venv/bin/pip install -r tools/requirements-peft-llama.txt
    scripts/setup-assets.sh smollm2
    # an adapter: a few causal-LM steps (weight-wise LoRA), exported for PEFT
    superlora train --task causal-lm --model $GGUF --data text.txt --rank 4 --steps 20 --out runs/lm
    superlora export --adapter runs/lm/adapter --format peft --out runs/lm-peft
    superlora merge --adapter runs/lm/adapter --out runs/lm-merged      # optional: --merged
    /tmp/peft-llama-venv/bin/python tools/peft_llama_check.py --superlora target/release/superlora \
        --adapter runs/lm/adapter --peft runs/lm-peft [--merged runs/lm-merged] [--gguf $GGUF]

Exits 1 when max |Δ log p| exceeds --tol (default 1e-3).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("SUPERLORA_CACHE", os.path.expanduser("~/.cache/superlora"))
GGUF = os.path.join(CACHE, "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

TEXT = (
    "The lighthouse keeper's log, kept on the island from 1887 to 1912, records the weather twice a day. "
    "Most entries are short: wind from the north-west, a heavy swell, two ships passing before noon. "
    "Low-rank adaptation trains a small update to each weight matrix instead of the whole model."
)


def ours(superlora, gguf, adapter):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "lp.json")
        cmd = [superlora, "generate", "--model", gguf, "--logprobs", out]
        if adapter:
            cmd += ["--adapter", adapter]
        subprocess.run(cmd + [TEXT], check=True, stdout=subprocess.DEVNULL)
        with open(out) as fh:
            return json.load(fh)


def theirs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def max_diff(a, b):
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--superlora", required=True, help="the superlora binary")
    ap.add_argument("--adapter", required=True, help="our adapter folder (train's <out>/adapter)")
    ap.add_argument("--peft", required=True, help="its `export --format peft` folder")
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--merged", help="also load `superlora merge`'s folder of this adapter with transformers "
                    "and compare it with PEFT")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print("torch %s, transformers %s, peft %s" % (torch.__version__, transformers.__version__, peft.__version__))

    d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    base.eval()

    ours_base = ours(a.superlora, a.gguf, None)
    ids = ours_base["ids"]
    assert ids == tok(TEXT, add_special_tokens=False)["input_ids"], "the tokenizers disagree on the text"
    their_base = theirs(base, ids)
    d_base = max_diff(ours_base["logprobs"], their_base)

    with open(os.path.join(a.peft, "adapter_config.json")) as fh:
        cfg = json.load(fh)
    model = PeftModel.from_pretrained(base, a.peft)
    model.eval()
    their_tuned = theirs(model, ids)
    ours_tuned = ours(a.superlora, a.gguf, a.adapter)["logprobs"]
    d_tuned = max_diff(ours_tuned, their_tuned)
    moved = max_diff(their_tuned, their_base)

    print("%d tokens; adapter: %s r=%s alpha=%s on %d modules" % (
        len(ids), cfg.get("peft_type"), cfg.get("r"), cfg.get("lora_alpha"), len(cfg.get("target_modules") or [])))
    print("base model  max |Δ log p| ours vs transformers: %.3g" % d_base)
    print("with adapter max |Δ log p| ours vs PEFT:        %.3g" % d_tuned)
    print("the adapter moves PEFT's log p by up to         %.3g" % moved)
    ok = d_base <= a.tol and d_tuned <= a.tol and moved > 10 * a.tol
    if a.merged:
        merged = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32)
        merged.eval()
        d_merged = max_diff(theirs(merged, ids), their_tuned)
        print("merged folder (transformers) max |Δ log p| vs PEFT: %.3g" % d_merged)
        ok = ok and d_merged <= a.tol
    print("PASS" if ok else "FAIL", "(tolerance %g)" % a.tol)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
