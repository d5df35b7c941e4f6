"""SAM 3's text tokenizer (CLIP's byte-level BPE) without torch or sam3, so the serving side can turn a phrase
into the text encoder's input ids itself. Output equals `sam3.model.tokenizer_ve.SimpleTokenizer` (clean="lower")
id for id, truncation included (tests/test_clip_tokenizer.py)."""

from __future__ import annotations

import functools
import gzip
import html

import ftfy
import numpy as np
import regex

SOT, EOT = "<start_of_text>", "<end_of_text>"
_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes, 256 word-final bytes, merges, then SOT and EOT


def _byte_alphabet() -> list[str]:
    """One printable character per byte, so BPE never sees whitespace or control characters (CLIP's table:
    printable Latin-1 bytes stand for themselves, the rest shift up past 255 in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def _clean(text: str) -> str:
    """sam3's "lower" cleaning: mojibake fixed, entities decoded twice (so "&amp;amp;" is "&"), runs of
    whitespace made one space, then lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    def __init__(self, bpe_path):
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:_MERGES + 1]]
        self._bytes = _byte_alphabet()
        alphabet = sorted(self._bytes)  # CLIP numbers the byte symbols in code-point order, not byte order
        vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot, self.eot = self._ids[SOT], self._ids[EOT]
        # The special tokens come first, as in sam3: a phrase that spells "<end_of_text>" gets the real id.
        self._pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE)
        self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_word)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: merge the best-ranked adjacent pair everywhere, until no pair is a merge."""
        if word in (SOT, EOT):
            return (self._ids[word],)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda p: self._ranks.get(p, _MERGES))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self._ids[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """BPE ids of a phrase, without SOT/EOT."""
        ids: list[int] = []
        for token in self._pattern.findall(_clean(text)):
            ids.extend(self._bpe("".join(self._bytes[b] for b in token.encode("utf-8"))))
        return ids

    def __call__(self, texts: list[str], context_length: int = 32) -> np.ndarray:
        """(B, context_length) int64, zero-padded; a row too long is cut and its last slot made EOT, as sam3
        does, so every row still ends in EOT."""
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in zip(out, texts):
            ids = [self.sot, *self.encode(text), self.eot][:context_length]
            ids[-1] = self.eot
            row[:len(ids)] = ids
        return out
