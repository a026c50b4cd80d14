"""CLIP's byte-level BPE tokenizer, giving the same token ids as OpenAI's.

The vocabulary file ships with this package (see NOTICE beside it), so tokenising never downloads.
"""

from __future__ import annotations

import gzip
import html
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import ftfy
import numpy as np
import regex

logger = logging.getLogger(__name__)

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# CLIP uses the first 48,894 merges of the file (49,152 ids minus 256 bytes, their 256 word-final forms
# and the two special tokens). The first line of the file is a header.
MERGE_COUNT = 49152 - 256 - 2
WORD_END = "</w>"

# Splits text into words, numbers, punctuation runs and English contractions, as CLIP does.
TOKEN_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache()
def byte_to_unicode() -> dict[int, str]:
    """Map each byte to a printable character, so BPE receives no whitespace or control bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + shift)
            shift += 1
    return dict(zip(printable, (chr(code) for code in characters)))


def clean_text(text: str) -> str:
    """Fix mojibake, unescape HTML twice, collapse whitespace and lower-case, as CLIP does."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def adjacent_pairs(symbols: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(symbols[:-1], symbols[1:]))


class ClipTokenizer:
    """Byte-level BPE with CLIP's vocabulary of 49,408 ids."""

    def __init__(self) -> None:
        vocab_bytes = resources.files("pipeline.text").joinpath(VOCAB_FILE).read_bytes()
        merge_lines = gzip.decompress(vocab_bytes).decode("utf-8").split("\n")[1:MERGE_COUNT + 1]
        merges = [tuple(line.split()) for line in merge_lines]

        byte_characters = list(byte_to_unicode().values())
        vocab = byte_characters + [character + WORD_END for character in byte_characters]
        vocab += ["".join(merge) for merge in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]

        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.merge_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.start_id = self.encoder[START_OF_TEXT]
        self.end_id = self.encoder[END_OF_TEXT]
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one pre-tokenised word into BPE symbols, merging the lowest-ranked pair first."""
        if word in self._bpe_cache:
            return self._bpe_cache[word]

        symbols = tuple(word[:-1]) + (word[-1] + WORD_END,)
        while len(symbols) > 1:
            best = min(adjacent_pairs(symbols), key=lambda pair: self.merge_ranks.get(pair, float("inf")))
            if best not in self.merge_ranks:
                break

            merged: list[str] = []
            position = 0
            while position < len(symbols):
                if position < len(symbols) - 1 and (symbols[position], symbols[position + 1]) == best:
                    merged.append(symbols[position] + symbols[position + 1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            symbols = tuple(merged)

        self._bpe_cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start and end tokens."""
        ids: list[int] = []
        for word in TOKEN_PATTERN.findall(clean_text(text)):
            byte_word = "".join(self.byte_encoder[byte] for byte in word.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(byte_word))
        return ids


@dataclass(frozen=True)
class TokenizedTexts:
    input_ids: np.ndarray  # [texts, max_words] int32, zero padded
    attention_mask: np.ndarray  # [texts, max_words] bool, True on real tokens


@lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def tokenize_captions(captions: list[str], max_words: int, tokenizer: ClipTokenizer | None = None) -> TokenizedTexts:
    """Tokenise captions as CLIP4Clip's loaders do: start token, words cut to max_words - 2, end token, zeros."""
    if max_words < 3:
        raise ValueError(f"max_words={max_words} leaves no room for a word between the start and end tokens; use 3 or more")
    tokenizer = tokenizer or default_tokenizer()

    input_ids = np.zeros((len(captions), max_words), dtype=np.int32)
    attention_mask = np.zeros((len(captions), max_words), dtype=bool)
    truncated = 0
    for row, caption in enumerate(captions):
        words = tokenizer.encode(caption)
        if len(words) > max_words - 2:
            truncated += 1
            words = words[: max_words - 2]
        ids = [tokenizer.start_id, *words, tokenizer.end_id]
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = True

    if truncated:
        logger.info("cut %d of %d captions to max_words=%d tokens", truncated, len(captions), max_words)
    return TokenizedTexts(input_ids=input_ids, attention_mask=attention_mask)
