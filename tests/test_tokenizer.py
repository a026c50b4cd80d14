"""CLIP tokenizer: OpenAI's token ids and CLIP4Clip's truncation and padding."""

import numpy as np
import pytest

from pipeline.text.tokenizer import default_tokenizer, tokenize_captions

START, END = 49406, 49407


def test_diagram_matches_openai_ids():
    tokens = tokenize_captions(["a diagram"], max_words=4)
    assert tokens.input_ids.tolist() == [[START, 320, 22697, END]]


@pytest.mark.parametrize("text, expected", [
    # Ids produced by OpenAI's clip.tokenize for the same strings.
    ("a dog", [320, 1929]),
    ("a cat", [320, 2368]),
    ("A dog is running on the grass, happily!!", [320, 1929, 533, 2761, 525, 518, 5922, 267, 17316, 748]),
    ("café naïve 123 don't &amp; x", [15304, 1097, 35689, 563, 272, 273, 274, 847, 713, 261, 343]),
])
def test_encode_matches_openai_ids(text, expected):
    assert default_tokenizer().encode(text) == expected


def test_vocab_size_is_clips():
    assert default_tokenizer().vocab_size == 49408


def test_long_caption_cut_to_max_words():
    tokens = tokenize_captions(["one two three four five six seven eight"], max_words=6)
    ids = tokens.input_ids[0].tolist()
    assert ids[0] == START
    assert ids[-1] == END
    assert len(ids) == 6
    assert tokens.attention_mask[0].all()


def test_short_caption_zero_padded():
    tokens = tokenize_captions(["a dog"], max_words=8)
    assert tokens.input_ids[0].tolist() == [START, 320, 1929, END, 0, 0, 0, 0]
    assert tokens.attention_mask[0].tolist() == [True] * 4 + [False] * 4
    assert tokens.input_ids.dtype == np.int32


def test_max_words_below_three_rejected():
    with pytest.raises(ValueError, match="max_words=2"):
        tokenize_captions(["a dog"], max_words=2)
