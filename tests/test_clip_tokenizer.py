"""The torch-free CLIP tokenizer (engines/clip_tokenizer.py) against SAM 3's own, id for id."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

PHRASES = [
    "wheel", "a wheel", "beaver tooth grille", "the dog", "A RED Car", "Traffic Light",
    "cat, dog; bird!", "person (left)", "what?!...", "hello-world", "e-mail @ home #1",
    "3 apples", "2024 model year", "12.5 cm", "dog's", "it's", "they're", "we'll", "I'd've", "DOG'S BONE",
    "café crème", "naïve façade", "Straße", "ÉCOLE", "Ñandú",
    "猫", "一只狗", "東京タワー", "고양이", "кошка", "العربية",
    "🐶", "dog 🐶 park", "👍🏽", "🇫🇷 flag",
    "salt &amp; pepper", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "caf&eacute;", "fish &#38; chips",
    "  lots   of\t\twhite\nspace  ", "\u00a0non-breaking\u2003space", "",
    " ", "<end_of_text>", "a <start_of_text> b",
    "Ã©tÃ©",  # mojibake that ftfy repairs
    " ".join(["a very long phrase with many words"] * 6),  # > 32 tokens: truncated
    "supercalifragilisticexpialidocious " * 8,
]


@pytest.fixture(scope="module")
def bpe_path() -> str:
    open_clip = pytest.importorskip("open_clip", reason="open_clip ships the BPE vocabulary file")
    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


@pytest.mark.parametrize("context_length", [32, 77, 8])
def test_matches_sam3(bpe_path, context_length):
    tokenizer_ve = pytest.importorskip("sam3.model.tokenizer_ve",
                                       reason="sam3 (the reference tokenizer) is not installed")
    from maskserve.engines.clip_tokenizer import ClipTokenizer

    ours = ClipTokenizer(bpe_path)(PHRASES, context_length=context_length)
    theirs = tokenizer_ve.SimpleTokenizer(bpe_path=bpe_path)(PHRASES, context_length=context_length).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(PHRASES), context_length)
    for phrase, a, b in zip(PHRASES, ours, theirs):
        assert a.tolist() == b.tolist(), phrase
    assert ours.tobytes() == theirs.astype(np.int64).tobytes()


def test_encode_and_truncation(bpe_path):
    from maskserve.engines.clip_tokenizer import ClipTokenizer

    tok = ClipTokenizer(bpe_path)
    assert tok.encode("") == []
    assert tok([""]).tolist()[0][:3] == [tok.sot, tok.eot, 0]
    long = tok([PHRASES[-2]], context_length=32)[0]
    assert long[0] == tok.sot and long[-1] == tok.eot and (long != 0).all()
    assert long[1:-1].tolist() == tok.encode(PHRASES[-2])[:30]  # the 31st token gives way to EOT


def test_imports_without_torch(bpe_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from maskserve.engines.clip_tokenizer import ClipTokenizer\n"
            f"ids = ClipTokenizer({bpe_path!r})(['a wheel'])\n"
            "assert ids.shape == (1, 32) and ids[0, 0] == 49406, ids\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "print(ids[0, :5].tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[49406, 320, 6744, 49407, 0]"  # sam3's ids for it
