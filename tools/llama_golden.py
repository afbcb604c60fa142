#!/usr/bin/env python3
"""Parity goldens for the Llama decoder (SmolLM2-135M-Instruct GGUF) from Hugging Face transformers.

transformers dequantizes the same GGUF (Q4_1 linears, Q8_0 embeddings) into an f32 PyTorch
LlamaForCausalLM and builds its tokenizer from the GGUF metadata. This script writes
crates/superlora-models/tests/fixtures/llama/golden.json with, for a fixed text of a few hundred
tokens: its token ids, the log-probability of each next token (float64 log-softmax of transformers'
f32 logits), and the perplexity; plus the ids of a few tokenizer probes, of a rendered chat, and
transformers' greedy continuation of a short prompt. The Rust tests (tests/llama.rs) compare
against it with no Python at test time.

Usage (a throwaway venv; versions pinned in tools/requirements-llm.txt):
    python3 -m venv /tmp/llm-venv && /tmp/llm-venv/bin/pip install -r tools/requirements-llm.txt
    scripts/setup-assets.sh smollm2
    /tmp/llm-venv/bin/python tools/llama_golden.py [GGUF] [OUT.json]
"""

import json
import math
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("SUPERLORA_CACHE", os.path.expanduser("~/.cache/superlora"))
GGUF = os.path.join(CACHE, "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(os.path.dirname(__file__), "..", "crates/superlora-models/tests/fixtures/llama/golden.json")

# The fixed text (written for this test): prose, numbers, punctuation, a contraction, code and
# line breaks, so that the byte-level BPE's pre-tokenizer rules all get exercised.
TEXT = """The lighthouse keeper's log, kept on the island from 1887 to 1912, records the weather twice a day.
Most entries are short: wind from the north-west, a heavy swell, two ships passing before noon. Some are longer.
In the winter of 1903 the supply boat could not land for six weeks, and the keeper wrote that they had eaten
the last of the flour and were living on salted fish, potatoes and tea. He counted the lamp oil carefully,
because the light could not go dark; a ship that missed the reef by a mile would strike it in the fog.

Low-rank adaptation trains a small update to each weight matrix instead of the whole model. If W is a
576 x 576 matrix, a rank-8 update costs 2 * 576 * 8 = 9,216 numbers, about 2.8% of the matrix. Folding the
updates of many layers into one tensor, as SuperLoRA does, can share parameters across layers.

def perplexity(log_probs):
    return math.exp(-sum(log_probs) / len(log_probs))

Questions worth asking: does it work on 2 cores? Will it fit in 3 GB? It's late, and the tea is cold."""

# Tokenizer probes: leading/trailing/multiple spaces, digits, unicode, special tokens as text.
PROBES = [
    "Hello world",
    " Hello  world ",
    "12345 + 678 = 13023",
    "naïve café, Grüße — 東京 🙂",
    "tabs\tand\nnewlines\n\n  indented",
    "<|im_start|>user\nHi<|im_end|>",
    "don't won't it's I'M",
]

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_WITH_SYSTEM = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 16


def main():
    gguf = sys.argv[1] if len(sys.argv) > 1 else GGUF
    out = sys.argv[2] if len(sys.argv) > 2 else OUT
    torch.set_num_threads(2)
    torch.manual_seed(0)
    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()

    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT, "transformers' tokenizer does not round-trip the text"
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    next_lp = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    ppl = math.exp(-sum(next_lp) / len(next_lp))

    probes = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in PROBES]
    chats = []
    for msgs in (CHAT, CHAT_WITH_SYSTEM):
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        chats.append({"messages": msgs, "text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]})

    prompt = tok(GREEDY_PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        gen = model.generate(
            torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=2
        )[0, len(prompt):].tolist()

    golden = {
        "about": "tools/llama_golden.py: transformers %s, torch %s, on %s" % (transformers.__version__, torch.__version__, f),
        "text": TEXT,
        "ids": ids,
        "next_token_log_probs": [round(x, 7) for x in next_lp],
        "perplexity": ppl,
        "tokenizer_probes": probes,
        "chats": chats,
        "greedy": {"prompt": GREEDY_PROMPT, "prompt_ids": prompt, "tokens": gen, "text": tok.decode(gen)},
        "special": {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id},
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(golden, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print("%d tokens, perplexity %.4f, greedy: %r -> %s" % (len(ids), ppl, GREEDY_PROMPT, out))
    print("special ids: bos %s eos %s pad %s" % (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))


if __name__ == "__main__":
    main()
