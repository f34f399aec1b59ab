"""Build the bundled CLIP tokenizer files (`vocab.json`, `merges.txt`) from OpenAI's BPE merge list.

Why: zoetrope is offline by construction (DESIGN principle 7), so the tokenizer of SD1.5's text encoder
(OpenAI CLIP ViT-L/14) ships as package data instead of being fetched from a model hub. The only input is the
merge list `bpe_simple_vocab_16e6.txt.gz` that OpenAI published with CLIP (Radford et al. 2021) and that the
`open_clip_torch` wheel redistributes. This script is run once by a maintainer; its outputs are committed, and
zoetrope has no run-time dependency on open_clip.

The vocabulary is laid out exactly as OpenAI's `SimpleTokenizer` builds it, which is what gives the ids every SD1.5
text encoder was trained with:

    ids 0..255       the 256 byte symbols (GPT-2's reversible byte -> printable-character map)
    ids 256..511     the same symbols with the end-of-word marker `</w>`
    ids 512..49405   one token per merge, in merge order (the first 48894 merges of the file)
    49406, 49407     `<|startoftext|>`, `<|endoftext|>`

Usage:
    pip download open_clip_torch --no-deps -d /tmp/oc
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

MERGES_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer keeps this many merges: vocab = 512 + merges + 2 = 49408
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
OUTPUT = Path(__file__).resolve().parents[1] / "zoetrope" / "assets" / "tokenizer"


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character map (Radford et al. 2019), in OpenAI's vocabulary order.

    Printable latin-1 bytes map to themselves; the remaining bytes (controls, space, ...) map to the code points
    256, 257, ... in byte order, so that every byte has a visible, whitespace-free symbol the BPE can merge. The
    vocabulary lists the printable bytes first, then the others: the insertion order of this map.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols: dict[int, str] = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(next_code_point)
            next_code_point += 1
    return list(symbols.values())


def build(merge_lines: list[str]) -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merges as 'a b' strings) from the lines of `bpe_simple_vocab_16e6.txt`."""
    merges = merge_lines[1 : NUM_MERGES + 1]  # line 0 is the '#version' header
    if len(merges) != NUM_MERGES or any(len(line.split()) != 2 for line in merges):
        raise ValueError(f"expected {NUM_MERGES} merges of two symbols each; the merge file is not OpenAI's CLIP BPE")
    tokens = byte_symbols()
    tokens = tokens + [token + "</w>" for token in tokens]
    tokens += ["".join(line.split()) for line in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the built vocabulary")
    return vocab, merges


def read_merge_lines(source: Path) -> list[str]:
    """Lines of the merge list, read from an open_clip wheel or from the `.txt.gz` itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(MERGES_IN_WHEEL)
    else:
        data = source.read_bytes()
    return gzip.decompress(data).decode("utf-8").split("\n")


def write(vocab: dict[str, int], merges: list[str], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (output / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN}
    (output / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    (output / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="open_clip_torch wheel, or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args()
    vocab, merges = build(read_merge_lines(arguments.source))
    write(vocab, merges, arguments.output)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {arguments.output}")


if __name__ == "__main__":
    main()
