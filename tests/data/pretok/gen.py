#!/usr/bin/env python3
"""Generates cases.json: random strings and how each pre-tokenizer's published regex splits them.

Run from this directory with the `regex` package installed: python3 gen.py
Splitting keeps unmatched text as its own piece, and chains apply each regex to the pieces of
the one before, as llama.cpp and Hugging Face tokenizers do.
"""
import json
import random

import regex

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
GPT4O = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAINS = {
    "gpt-2": [GPT2],
    "llama-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "starcoder": [r"\p{N}", GPT2],
    "gpt-4o": [GPT4O],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}

PIECES = (
    list("abcxyzABCXYZ0123456789    \t\n\r.,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|")
    + ["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'D"]
    + ["é", "É", "ß", "我", "想", "ǅ", "ʰ", "\u0301", "\u0903", "½", "²", "٣", "Ⅳ"]
    + ["\u00a0", "\u3000", "\u2028", "\u0085", "🦙", "😁", "\u200d", "～", "—", "«", "»", "€"]
    + ["Hello", " world", "HTTPServer", "McDonald", "  ", "\n\n", " \n ", "2024", "3.14"]
)


def split(pattern, text):
    out, last = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > last:
            out.append(text[last : m.start()])
        if m.end() > m.start():
            out.append(m.group())
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


def chain(patterns, text):
    pieces = [text] if text else []
    for p in patterns:
        pieces = [w for piece in pieces for w in split(p, piece)]
    return pieces


def main():
    rng = random.Random(20261129)
    texts = ["", " ", "a", "  a", "a  ", "\n \n", "I'm", " 12345", "a'LL", "É́x"]
    for _ in range(400):
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 24))))
    cases = {name: [[t, chain(ps, t)] for t in texts] for name, ps in CHAINS.items()}
    with open("cases.json", "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
