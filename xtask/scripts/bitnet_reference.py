#!/usr/bin/env python3
"""Write a tiny random BitNet b1.58 model with Hugging Face transformers, and its logits.

The fixture of `runtime/app/tests/convert.rs::tiny_bitnet_matches_hugging_face_transformers`:
`BitNetForCausalLM` (transformers' `modeling_bitnet.py`: sub-norms before the output
projections, a squared-ReLU gate, RoPE on head halves) with 2 layers, hidden size 64, 4 heads of
16, 2 KV heads, FFN 128, vocabulary 260, tied embeddings. Every weight is rounded to f16, the model
is saved in f16 (`config.json`, `model.safetensors`) and run in f32 on two token sequences; the
last position's logits go to `logits.json`.

    python3 -m pip install torch transformers
    python3 xtask/scripts/bitnet_reference.py -o tests/data/bitnet-tiny
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import BitNetConfig, BitNetForCausalLM

SEQUENCES = [[5], [5, 257, 40, 258, 7, 100]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.output)
    torch.manual_seed(args.seed)
    cfg = BitNetConfig(
        vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, hidden_act="relu2",
        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
        tie_word_embeddings=True, bos_token_id=258, eos_token_id=258,
    )
    model = BitNetForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if "embed" in name else 0.3)
            else:  # RMS norm weights
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            p.copy_(p.half().float())
        logits = [model(torch.tensor([s])).logits[0, -1].tolist() for s in SEQUENCES]
    model.half().save_pretrained(out, safe_serialization=True)
    (out / "logits.json").write_text(json.dumps({
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "sequences": SEQUENCES,
        "logits": logits,
    }))
    print("wrote", out, [len(l) for l in logits])


if __name__ == "__main__":
    main()
