#!/usr/bin/env python3
"""Cross-checks superlora's PEFT export and import against Hugging Face PEFT (not run by CI).

1. ours -> PEFT: `superlora export --format peft` of a MiniLM LoRA adapter trained by superlora is
   loaded with `peft.PeftModel.from_pretrained` on the same MiniLM weights (no missing or unexpected
   LoRA keys allowed); the mean-pooled sentence embeddings are compared with the `features` printed
   by `superlora predict --json` on the original adapter.
2. PEFT -> ours: a LoRA made in Python (r=4, lora_alpha=8, query+value, random non-zero lora_B) is
   saved with `save_pretrained`, brought in with `superlora import --format peft --preset
   minilm-rt`, and its `predict --json` features are compared with PEFT's embeddings.
3. For scale, the same embeddings with the adapter removed (the base model) are compared too, so the
   differences above can be read against the size of the adapter's effect.

Environment (pinned): python3 -m venv .venv-peft && .venv-peft/bin/pip install -r tools/requirements-peft.txt

    .venv-peft/bin/python tools/peft_check.py --adapter runs/<minilm-lora-run>/adapter

Prints one line per check with the max absolute difference; exits 1 if a difference exceeds --tol.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from transformers import AutoModel, PreTrainedTokenizerFast

SENTENCES = [
    "A man is eating food.",
    "an utterly charming and hilarious film that reminds us of the power of movies",
    "the plot is nothing but boilerplate cliches from start to finish",
    "The stock market fell sharply today.",
]


def cache_dir():
    base = os.environ.get("SUPERLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "superlora"
    )
    return base


def embed(model, tok, texts, max_len):
    out = []
    with torch.no_grad():
        for t in texts:
            b = tok(t, truncation=True, max_length=max_len, return_tensors="pt")
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1).clamp(min=1e-9))[0])
    return torch.stack(out)


def superlora_features(binary, adapter, texts):
    r = subprocess.run([binary, "predict", "--adapter", adapter, "--json", *texts], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"superlora predict failed:\n{r.stderr}")
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return torch.tensor([row["features"] for row in rows], dtype=torch.float32)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, help="a superlora MiniLM weight-wise LoRA adapter folder")
    ap.add_argument("--minilm", default=os.path.join(cache_dir(), "assets", "minilm"))
    ap.add_argument("--superlora", default="target/release/superlora")
    ap.add_argument("--max-len", type=int, default=64, help="the adapter's max_len (presets: 64)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"safetensors {safetensors.__version__}"
    )
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.minilm, "tokenizer.json"))
    worst = 0.0
    with tempfile.TemporaryDirectory() as work:
        # 1. ours -> PEFT
        exported = os.path.join(work, "peft-export")
        print(run([args.superlora, "export", "--adapter", args.adapter, "--format", "peft", "--out", exported]).strip())
        base = AutoModel.from_pretrained(args.minilm).eval()
        base_emb = embed(base, tok, SENTENCES, args.max_len)
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(args.minilm), exported).eval()
        res = set_peft_model_state_dict(model, load_peft_weights(exported))
        missing = [k for k in res.missing_keys if "lora_" in k]
        print(f"PEFT load: {len(missing)} missing LoRA keys, {len(res.unexpected_keys)} unexpected keys")
        if missing or res.unexpected_keys:
            sys.exit(f"missing {missing[:5]} unexpected {res.unexpected_keys[:5]}")
        peft_emb = embed(model, tok, SENTENCES, args.max_len)
        ours = superlora_features(args.superlora, args.adapter, SENTENCES)
        d = (peft_emb - ours).abs().max().item()
        effect = (peft_emb - base_emb).abs().max().item()
        print(f"ours -> PEFT: max |PEFT - superlora| pooled embedding = {d:.3e}  (adapter effect max |Δ| = {effect:.3e})")
        worst = max(worst, d)

        # 2. PEFT -> ours
        made = os.path.join(work, "peft-made")
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
        pm = get_peft_model(AutoModel.from_pretrained(args.minilm), cfg)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
        pm.save_pretrained(made)
        pm.eval()
        peft_emb = embed(pm, tok, SENTENCES, args.max_len)
        imported = os.path.join(work, "imported")
        print(run([args.superlora, "import", "--format", "peft", made, "--preset", "minilm-rt", "--out", imported]).strip())
        ours = superlora_features(args.superlora, imported, SENTENCES)
        d = (peft_emb - ours).abs().max().item()
        effect = (peft_emb - base_emb).abs().max().item()
        print(f"PEFT -> ours: max |PEFT - superlora| pooled embedding = {d:.3e}  (adapter effect max |Δ| = {effect:.3e})")
        worst = max(worst, d)
    print(f"worst difference {worst:.3e} (tolerance {args.tol:g})")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
