"""A local BM25 index over a Search-R1 corpus, built once and cached on disk.

The cache key is made of the corpus bytes and the index format, so every process
that opens the same corpus (rollout workers, the server) reuses one build. Search
answers in the shape of Search-R1's /retrieve (see retrieval.py).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import bm25s
import numpy as np

from envs.search.retrieval import Hit, default_cache_dir, read_corpus

STOPWORDS = "en"
_INDEX_FORMAT = "bm25s-2"  # bump when the way the index is built changes, so old caches are not reused


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


class BM25Index:
    """BM25 (bm25s: Lucene scoring, English stopwords, no stemming) over one corpus, cached on disk.

    bm25s builds and stores the index: for every word, the passages holding it (sorted)
    and its BM25 contribution to each. The top-k search reads those arrays itself, to
    skip most of the work on words that are in a large part of the corpus (see `_top`).
    """

    def __init__(self, corpus: str | Path, cache_dir: str | Path | None = None):
        corpus = Path(corpus)
        self.ids, self.contents = read_corpus(corpus)
        key = f"bm25-{_file_digest(corpus)}-{_INDEX_FORMAT}"
        self.path = Path(cache_dir or default_cache_dir()) / "index" / key
        if not (self.path / "params.index.json").exists():
            self._build(self.path)
        self.bm25 = bm25s.BM25.load(self.path, mmap=True)  # worker processes share the pages of one index
        if self.bm25.scores["num_docs"] != len(self.ids) or self.bm25.method != "lucene":
            raise ValueError(
                f"index {self.path} is not a Lucene BM25 index of the {len(self.ids)} passages of {corpus}"
            )
        # Plain array views of the memory maps: indexing an np.memmap is several times slower.
        self._data, self._docs, self._ptr = (np.asarray(self.bm25.scores[k]) for k in ("data", "indices", "indptr"))
        # The largest contribution of each word to any passage: what a passage the search skips could gain from it.
        lengths = np.diff(self._ptr)
        self._bound = np.zeros(len(lengths), np.float64)
        self._bound[lengths > 0] = np.maximum.reduceat(self._data, self._ptr[:-1][lengths > 0])
        self._rare_max = max(32, len(self.ids) // 100)  # a word in at most this many passages is "rare"

    def _build(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=final.name + ".tmp"))
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(self.contents, stopwords=STOPWORDS, show_progress=False), show_progress=False)
        docs, ptr = bm25.scores["indices"], bm25.scores["indptr"]
        word_of = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))  # the word of each posting
        if not np.all(np.diff(docs)[word_of[1:] == word_of[:-1]] > 0):
            raise RuntimeError("this bm25s version stores unsorted posting lists; BM25Index._top needs them sorted")
        bm25.save(tmp, show_progress=False)
        try:
            tmp.rename(final)  # atomic: another process building the same index at once wins or loses cleanly
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        """The top `topk` passages of each query, best first; passages that match no query word are left out."""
        vocab = self.bm25.vocab_dict
        tokens = bm25s.tokenize(queries, stopwords=STOPWORDS, show_progress=False, return_ids=False) if queries else []
        k = min(topk, len(self.ids))
        results = []
        for words in tokens:
            word_ids = [vocab[w] for w in words if w in vocab and w != ""]  # "" is bm25s's placeholder, not a word
            top, scores = self._top(word_ids, k) if word_ids else (np.zeros(0, int), np.zeros(0))
            results.append(
                [
                    {"document": {"id": self.ids[d], "contents": self.contents[d]}, "score": s}
                    for d, s in zip(top.tolist(), scores.tolist())
                    if s > 0
                ]
            )
        return results

    def _top(self, word_ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact BM25 top k of one query (a repeated word counts repeatedly): (passage indices, scores), best first.

        Scoring every passage means a pass over all postings of every query word, and a word
        like "born" is in half of a world's passages. So, as in MaxScore, first score only the
        passages that hold one of the query's rare words, exactly: their common words are
        looked up by binary search in the sorted postings. A passage without a rare word
        scores at most the sum of the common words' largest contributions; when the k-th
        best candidate beats that, the candidates' top k is the answer. Otherwise (no rare
        word, or too few candidates) every passage is scored.
        """
        words, counts = np.unique(np.asarray(word_ids), return_counts=True)
        starts, ends = self._ptr[words], self._ptr[words + 1]
        rare = ends - starts <= self._rare_max
        if rare.any():
            postings = np.concatenate([np.arange(a, b) for a, b in zip(starts[rare], ends[rare])])
            weights = np.repeat(counts[rare], ends[rare] - starts[rare])
            candidates, where = np.unique(self._docs[postings], return_inverse=True)
            scores = np.bincount(where, weights=self._data[postings] * weights)
            for a, b, count in zip(starts[~rare], ends[~rare], counts[~rare]):
                holders = self._docs[a:b]
                i = np.minimum(np.searchsorted(holders, candidates), b - a - 1)
                found = holders[i] == candidates
                scores[found] += count * self._data[a + i[found]]
            ceiling = float(np.dot(self._bound[words[~rare]], counts[~rare]))
            if len(candidates) >= k:
                top = np.argpartition(-scores, k - 1)[:k]
                if scores[top].min() > ceiling:
                    top = top[np.argsort(-scores[top], kind="stable")]
                    return candidates[top], scores[top]
        scores = self.bm25.get_scores(list(word_ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]
