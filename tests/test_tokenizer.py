"""The bundled CLIP tokenizer: OpenAI's vocabulary layout and ids, loadable offline, reproducible by the build tool."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "zoetrope" / "assets" / "tokenizer"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" with OpenAI CLIP


def _build_tool():
    spec = importlib.util.spec_from_file_location("build_clip_tokenizer", ROOT / "tools" / "build_clip_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    return json.loads((ASSETS / "vocab.json").read_text(encoding="utf-8"))


def test_transformers_tokenizer_from_bundled_files_gives_openai_ids():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(str(ASSETS / "vocab.json"), str(ASSETS / "merges.txt"))
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS


def test_bundled_tokenizer_pads_with_end_token_to_77():
    from zoetrope.pipelines.components import bundled_tokenizer

    tokenizer = bundled_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:7] == CAT_IDS and ids[7:] == [49407] * 70
    assert "open_clip" not in sys.modules


def test_vocabulary_layout_is_openai_simple_tokenizer(vocab):
    ids = sorted(vocab.values())
    assert ids == list(range(49408))
    by_id = {index: token for token, index in vocab.items()}
    bytes_ = [by_id[index] for index in range(256)]
    assert len(set(bytes_)) == 256 and all(len(symbol) == 1 for symbol in bytes_)
    assert by_id[0] == "!" and by_id[93] == "~"  # printable ASCII first, in byte order
    assert [by_id[256 + index] for index in range(256)] == [symbol + "</w>" for symbol in bytes_]
    assert by_id[512] == "in" and by_id[49406] == "<|startoftext|>" and by_id[49407] == "<|endoftext|>"
    merges = (ASSETS / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1] == "i n" and len(merges) == 1 + 48894


def test_build_tool_reproduces_committed_files(vocab):
    tool = _build_tool()
    merges = (ASSETS / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    lines = ['"bpe_simple_vocab_16e6.txt#version: 0.2'] + merges + ["extra merge beyond the cut", ""]
    built_vocab, built_merges = tool.build(lines)
    assert built_vocab == vocab
    assert built_merges == merges


def test_build_tool_rejects_a_short_merge_list():
    tool = _build_tool()
    with pytest.raises(ValueError, match="48894 merges"):
        tool.build(["#version: 0.2", "i n", "t h"])


def test_byte_symbols_are_gpt2_byte_map():
    symbols = _build_tool().byte_symbols()
    assert len(set(symbols)) == 256
    assert symbols[:94] == [chr(code) for code in range(ord("!"), ord("~") + 1)]
    assert "Ġ" in symbols  # the space byte (0x20) is the 33rd non-printable byte: chr(256 + 32)
    assert all(not symbol.isspace() for symbol in symbols)
