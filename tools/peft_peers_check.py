#!/usr/bin/env python3
"""Cross-checks superlora's PEFT export and import of the few-parameter peers, VeRA and FourierFT,
against Hugging Face PEFT (not run by CI). --adapter picks the family: a VeRA adapter
(`train --factor vera`) or a FourierFT one (`train --count n`), trained by superlora on MiniLM.

1. ours -> PEFT: `superlora export --format peft` of the adapter is loaded with
   `peft.PeftModel.from_pretrained` over transformers' BertModel on the same MiniLM weights (no
   missing adapter keys, no unexpected keys); its mean-pooled embeddings are compared with the
   `features` of `superlora predict --json` on the original adapter.
2. PEFT -> ours: an adapter of the same family made in Python (VeRA: r=8, save_projection=True,
   random non-zero vera_lambda_b and vera_lambda_d; FourierFT: n_frequency=200, scaling 150,
   random_loc_seed 1234, random spectrum), query+value, is saved with `save_pretrained`, brought in
   with `superlora import --format peft --preset minilm-rt`, and compared the same way.
3. ours -> PEFT -> ours: the export of 1 imported back must give the original features (VeRA comes
   back as VeRA because its vera_A/vera_B are ours for the seed in projection_prng_key; FourierFT
   because PEFT's frequencies and ours are the same torch randperm of random_loc_seed).

Differences are printed as max |a - b| and relative to max |features|; the adapters' own effect
(max |adapted - base|) is printed for scale. Exits 1 if a relative difference exceeds --tol.

Environment (pinned): python3 -m venv .venv-peft && .venv-peft/bin/pip install -r tools/requirements-peft.txt

    .venv-peft/bin/python tools/peft_peers_check.py --adapter runs/<minilm-vera-or-fourierft-run>/adapter
"""

import argparse
import json
import os
import sys
import tempfile

import peft
import torch
import transformers
from peft import FourierFTConfig, PeftModel, VeraConfig, get_peft_model
from transformers import AutoModel, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peft_check import SENTENCES, cache_dir, embed, run, superlora_features  # noqa: E402


def compare(label, peft_emb, ours, base_emb):
    d = (peft_emb - ours).abs().max().item()
    rel = d / ours.abs().max().item()
    effect = (peft_emb - base_emb).abs().max().item()
    print(f"{label}: max |PEFT - superlora| = {d:.3e}, relative {rel:.3e}  (adapter effect max |Δ| = {effect:.3e})")
    return rel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True, help="a superlora MiniLM VeRA or FourierFT adapter folder")
    ap.add_argument("--minilm", default=os.path.join(cache_dir(), "assets", "minilm"))
    ap.add_argument("--superlora", default="target/release/superlora")
    ap.add_argument("--max-len", type=int, default=64, help="the adapter's max_len (presets: 64)")
    ap.add_argument("--tol", type=float, default=1e-5, help="largest relative difference allowed")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.minilm, "tokenizer.json"))
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        ours_cfg = json.load(f)["adapter"]
    if ours_cfg["factorization"]["kind"] == "vera":
        family, config_class, tag = "VeRA", VeraConfig, "vera_"
    elif ours_cfg["projection"]["kind"] == "fourier":
        family, config_class, tag = "FourierFT", FourierFTConfig, "fourierft_"
    else:
        sys.exit(f"{args.adapter} is neither VeRA nor FourierFT: {ours_cfg}")
    print(f"family: {family}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as work:
        base = AutoModel.from_pretrained(args.minilm).eval()
        base_emb = embed(base, tok, SENTENCES, args.max_len)

        # 1. ours -> PEFT
        exported = os.path.join(work, "peft-export")
        print(run([args.superlora, "export", "--adapter", args.adapter, "--format", "peft", "--out", exported]).strip())
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(args.minilm), exported).eval()
        if not isinstance(model.peft_config["default"], config_class):
            sys.exit(f"PEFT loaded {type(model.peft_config['default']).__name__}, not {config_class.__name__}")
        res = model.load_adapter(exported, adapter_name="check")
        missing = [k for k in res.missing_keys if tag in k]
        print(f"PEFT load: {len(missing)} missing {family} keys, {len(res.unexpected_keys)} unexpected keys")
        if missing or res.unexpected_keys:
            sys.exit(f"missing {missing[:5]} unexpected {res.unexpected_keys[:5]}")
        model.set_adapter("default")
        peft_emb = embed(model, tok, SENTENCES, args.max_len)
        ours = superlora_features(args.superlora, args.adapter, SENTENCES)
        worst = max(worst, compare("ours -> PEFT", peft_emb, ours, base_emb))

        # 3. ours -> PEFT -> ours
        back = os.path.join(work, "back")
        print(run([args.superlora, "import", "--format", "peft", exported, "--like", args.adapter, "--out", back]).strip())
        again = superlora_features(args.superlora, back, SENTENCES)
        d = (again - ours).abs().max().item()
        print(f"ours -> PEFT -> ours: max |back - original| = {d:.3e}, relative {d / ours.abs().max().item():.3e}")
        worst = max(worst, d / ours.abs().max().item())

        # 2. PEFT -> ours
        made = os.path.join(work, "peft-made")
        if family == "VeRA":
            cfg = VeraConfig(r=8, target_modules=["query", "value"], save_projection=True, projection_prng_key=1234)
            trained = ("vera_lambda_b", "vera_lambda_d")
        else:
            cfg = FourierFTConfig(n_frequency=200, scaling=150.0, random_loc_seed=1234, target_modules=["query", "value"])
            trained = ("fourierft_spectrum",)
        pm = get_peft_model(AutoModel.from_pretrained(args.minilm), cfg)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if any(t in name for t in trained):
                    p.normal_(0.0, 0.5)
        pm.save_pretrained(made)
        pm.eval()
        peft_emb = embed(pm, tok, SENTENCES, args.max_len)
        imported = os.path.join(work, "imported")
        print(run([args.superlora, "import", "--format", "peft", made, "--preset", "minilm-rt", "--out", imported]).strip())
        ours = superlora_features(args.superlora, imported, SENTENCES)
        worst = max(worst, compare("PEFT -> ours", peft_emb, ours, base_emb))
    print(f"worst relative difference {worst:.3e} (tolerance {args.tol:g})")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
