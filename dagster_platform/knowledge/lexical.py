"""BM25 index over knowledge chunks, built with bm25s from our own tokens.

bm25s's default splitter, English stemmer and stop words would mangle Korean, so the index is
built from token ids we compute with `tokens.tokenize`, and queries go through the same
tokenizer. Scores come straight from bm25s's precomputed sparse matrix; top-k selection is
done here so that zero-score rows (no shared token, or masked out by a metadata filter) never
come back as hits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path

import bm25s
import numpy as np

from dagster_platform.knowledge.tokens import tokenize

Tokenizer = Callable[[str], list[str]]

IDS_FILE = "ids.json"
_FORMAT = 1


class LexicalIndexError(Exception):
    """A saved lexical index is missing, unreadable or inconsistent."""


class LexicalIndex:
    """BM25 over a fixed list of rows; `ids[i]` names row `i`, as `allowed` masks do."""

    def __init__(
        self, ids: Sequence[str], bm25: bm25s.BM25 | None, tokenizer: Tokenizer = tokenize
    ):
        self.ids: list[str] = list(ids)
        self._bm25 = bm25  # None when no row has a token: every search is then empty
        self._tokenizer = tokenizer

    @classmethod
    def build(
        cls, ids: Sequence[str], texts: Sequence[str], tokenizer: Tokenizer = tokenize
    ) -> LexicalIndex:
        """Index `texts[i]` under `ids[i]`."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        # a token seen for the first time gets the next id; map() keeps the loop in C
        vocab: defaultdict[str, int] = defaultdict(count().__next__)
        corpus = [list(map(vocab.__getitem__, tokenizer(text))) for text in texts]
        if not vocab:
            return cls(ids, None, tokenizer)
        bm25 = bm25s.BM25(csc_backend="scipy")
        # passing (token ids, vocab) skips bm25s's own tokenisation; no empty token, since
        # queries without known tokens are answered here before reaching bm25s
        bm25.index((corpus, dict(vocab)), create_empty_token=False, show_progress=False)
        return cls(ids, bm25, tokenizer)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, query: str, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """Up to `k` (id, score) pairs with a positive BM25 score, best first.

        `allowed` is a boolean mask over the rows (a metadata filter); it is applied to the
        scores before the top-k, so a filter never starves the result list.
        """
        if allowed is not None and (allowed.dtype != np.bool_ or allowed.shape != (len(self),)):
            raise ValueError(f"allowed must be a boolean mask of shape ({len(self)},)")
        if k <= 0 or self._bm25 is None:
            return []
        token_ids = self._bm25.get_tokens_ids(self._tokenizer(query))
        if not token_ids:
            return []
        scores = self._bm25.get_scores_from_ids(token_ids, weight_mask=allowed)
        rows = np.flatnonzero(scores > 0)
        if len(rows) > k:
            rows = rows[np.argpartition(scores[rows], -k)[-k:]]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        return [(self.ids[r], float(scores[r])) for r in rows]

    def save(self, folder: str | Path) -> None:
        """Write the bm25s index and the row ids to `folder`; the ids file is written last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / IDS_FILE).unlink(missing_ok=True)
        if self._bm25 is not None:
            self._bm25.save(folder, show_progress=False)
        meta = {"format": _FORMAT, "ids": self.ids, "empty": self._bm25 is None}
        (folder / IDS_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Tokenizer = tokenize) -> LexicalIndex:
        """Read an index written by `save`; `tokenizer` must be the one it was built with."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
            ids = meta["ids"]
            ids_ok = isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            if meta["format"] != _FORMAT or not ids_ok:
                raise LexicalIndexError(f"{folder / IDS_FILE} is not a lexical index id list")
            bm25 = None if meta["empty"] else bm25s.BM25.load(folder, show_progress=False)
            if bm25 is not None:
                _check_consistent(folder, bm25, len(ids))
        except LexicalIndexError:
            raise
        except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
            raise LexicalIndexError(f"cannot load lexical index from {folder}: {e}") from e
        return cls(ids, bm25, tokenizer)


def _check_consistent(folder: Path, bm25: bm25s.BM25, n_rows: int) -> None:
    """Catch files that load but do not belong together (partial overwrite, truncation)."""
    scores = bm25.scores
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    n_vocab = len(indptr) - 1
    problems = []
    if scores["num_docs"] != n_rows:
        problems.append(f"{scores['num_docs']} indexed rows but {n_rows} ids")
    if len(data) != len(indices) or n_vocab < 0 or indptr[-1] != len(data):
        problems.append("score arrays do not match each other")
    if len(bm25.vocab_dict) != n_vocab or set(bm25.vocab_dict.values()) != set(range(n_vocab)):
        problems.append("vocabulary does not match the score matrix")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_rows):
        problems.append("score matrix refers to rows that do not exist")
    if problems:
        raise LexicalIndexError(f"inconsistent lexical index in {folder}: {'; '.join(problems)}")
