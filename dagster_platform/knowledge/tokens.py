"""Tokenisation for BM25 over mixed Korean and English operations text.

Korean glues particles onto words ("클러스터가", "클러스터의"), so whole-word tokens rarely match
between a question and a document. Overlapping character bigrams of each Hangul run share
most of their tokens whatever particle follows, with no morphological analyser to install.
Latin text keeps its identifiers whole (`etl-prod-worker-02`, `application_..._0488`) and also
emits their parts, so a pasted id and a fragment of it ("worker-02", "0488") both match.
"""

import re
import unicodedata
from functools import lru_cache

# A Hangul syllable run, or a word of other letters/digits optionally joined by - _ . into an
# identifier. Separators only count between two word characters, so a leading dash
# (`-safemode`) or a sentence's final period is dropped.
_TOKEN = re.compile(r"([\uac00-\ud7a3]+)|((?:[^\W_\uac00-\ud7a3]+)(?:[-_.][^\W_\uac00-\ud7a3]+)*)")
_SEPARATOR = re.compile(r"[-_.]")


def tokenize(text: str) -> list[str]:
    """BM25 tokens of `text`: Hangul bigrams, plus identifiers whole and split on - _ ."""
    # No token spans whitespace, so tokenising word by word through a cache gives the same
    # list while running the regex once per distinct word: 100,000 chunks take seconds.
    tokens: list[str] = []
    for word in unicodedata.normalize("NFKC", text).lower().split():
        tokens += _word_tokens(word)
    return tokens


@lru_cache(maxsize=1 << 16)
def _word_tokens(word: str) -> tuple[str, ...]:
    tokens: list[str] = []
    for hangul, latin in _TOKEN.findall(word):
        if len(hangul) == 1:
            tokens.append(hangul)
        elif hangul:
            tokens.extend(hangul[i : i + 2] for i in range(len(hangul) - 1))
        else:
            tokens.append(latin)
            if "-" in latin or "_" in latin or "." in latin:
                tokens.extend(_SEPARATOR.split(latin))
    return tuple(tokens)


def whitespace_tokenize(text: str) -> list[str]:
    """Naive lowercase split on whitespace: the baseline `tokenize` is evaluated against."""
    return text.lower().split()
