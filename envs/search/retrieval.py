"""Retrieval: the corpus format and a client for Search-R1's retrieval server API.

The local BM25 index (bm25.py) and the client here answer a batch of queries in the
same shape, the one Search-R1's `/retrieve` returns, so the environment does not
care which one it talks to:

    [[{"document": {"id": "17", "contents": "\\"Title\\"\\ntext"}, "score": 7.3}, ...], ...]   # one list per query

A corpus is a JSONL file in Search-R1's format, one passage per line:
{"id": str, "contents": "\\"Title\\"\\ntext"}.

Servers written by others send less: Search-R1's BM25 server with stored raw documents
and its web-search servers omit "id" and "score", and some give "title" and "text"
instead of "contents". The client fills them in (`as_hit`): the id is a stable hash of
the contents, the score None, the contents "title\\ntext".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.parse
from pathlib import Path

from envs.jsonl import BadLine, numbered_jsonl

Hit = dict  # {"document": {"id": str, "contents": str}, "score": float}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SELFCORRECT_CACHE", Path.home() / ".cache" / "selfcorrect")) / "search"


def as_hit(item) -> Hit:
    """One hit of any Search-R1-style answer, as {"document": {"id", "contents", ...}, "score"}.

    `item` is {"document": doc, "score": s} or a bare doc (return_scores=false); a doc has
    "contents" ("title\\ntext") or "title" and "text", and maybe an "id". Its other fields are kept.
    """
    doc = item.get("document", item) if isinstance(item, dict) else None
    if not isinstance(doc, dict):
        raise ValueError(f"a document must be a JSON object, got {str(item)[:80]}")
    contents = doc.get("contents")
    if not isinstance(contents, str):
        if not isinstance(doc.get("text"), str):
            raise ValueError(f'a document needs a string "contents" or "text", got fields {sorted(doc)}')
        contents = f"{doc.get('title') or ''}\n{doc['text']}"
    # Without an id, a hash of the contents: the same passage gets the same id in every answer.
    doc_id = doc.get("id")
    doc_id = str(doc_id) if doc_id is not None else hashlib.sha1(contents.encode()).hexdigest()[:16]
    score = item.get("score") if "document" in item else None
    return {"document": {**doc, "id": doc_id, "contents": contents}, "score": score}


def read_corpus(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, contents) of a Search-R1 corpus JSONL file; lines read as a server's documents are (`as_hit`)."""
    ids, contents = [], []
    what = 'not a corpus line {"id", "contents": str}'
    try:
        for n, record in numbered_jsonl(path):
            try:
                document = as_hit(record)["document"]
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {what} ({e})") from e
            ids.append(document["id"])
            contents.append(document["contents"])
    except BadLine as e:
        raise ValueError(f"{path}:{e.line}: {what} (not JSON: {e.reason})") from None
    if not ids:
        raise ValueError(f"{path}: the corpus is empty")
    return ids, contents


def split_contents(contents: str) -> tuple[str, str]:
    """(title, text) of a passage's contents: the first line is the title (in quotes, kept as Search-R1 shows it)."""
    title, _, text = contents.partition("\n")
    return title, text


class RetrievalError(RuntimeError):
    """The retrieval server could not answer (down, too slow, or it rejected the request)."""


class RetrievalClient:
    """Client for Search-R1's `POST /retrieve`: all queries of a call go in one request.

    Works with `python -m envs.search serve` and with Search-R1's own dense (E5/FAISS)
    server. A request that fails to connect, times out or gets a 5xx answer is retried
    `retries` times with a growing pause; then RetrievalError says what happened.
    Connections are kept open for the next request, from any thread (no TCP handshake
    and no new server thread per request); one the server has closed meanwhile (uvicorn
    drops idle connections after 5 s) is replaced at once, without counting as a failure.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        retries: int = 2,
        max_in_flight: int = 8,  # requests waiting for an answer at once; more callers queue
        rate_per_s: float = 0.0,  # requests sent per second at most, in bursts of up to one second's (0 = no limit)
    ):
        url = url.rstrip("/")
        self.url = url if url.endswith("/retrieve") else url + "/retrieve"
        parts = urllib.parse.urlsplit(self.url)
        self._connect = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host, self._path = parts.netloc, parts.path
        self.timeout_s, self.retries = timeout_s, retries
        self._idle: list[http.client.HTTPConnection] = []  # open connections no request is using
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._bucket = TokenBucket(rate_per_s, max(rate_per_s, 1.0)) if rate_per_s > 0 else None
        self._rng = random.Random()
        self.requests = 0  # POSTs sent (retries included)
        # the server's own search time in the last answer (Server-Timing), if sent
        self.last_search_ms: float | None = None

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST, on an idle kept-open connection or a new one."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's sockets
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        conn = conn or self._connect(self._host, timeout=self.timeout_s)
        try:
            conn.request("POST", self._path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except Exception as e:
            conn.close()
            if reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                return self._post(body)  # the server closed it while idle: try the next one, or a new one
            raise
        timing = re.search(r"search;dur=([0-9.]+)", response.getheader("Server-Timing") or "")
        self.last_search_ms = float(timing.group(1)) if timing else None
        with self._lock:
            self._idle.append(conn)
        return response.status, data

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        body = json.dumps({"queries": queries, "topk": topk, "return_scores": True}).encode()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:  # full jitter: clients that failed together do not all come back together
                time.sleep(self._rng.uniform(0, 0.2 * 2**attempt))
            if self._bucket is not None:
                self._bucket.take()
            try:
                with self._slots:
                    self.requests += 1
                    status, data = self._post(body)
            except (OSError, http.client.HTTPException) as e:
                timed_out = isinstance(e, TimeoutError)
                problem = f"timed out after {self.timeout_s:g} s" if timed_out else f"{type(e).__name__}: {e}"
                continue
            if status >= 400:
                detail = f"HTTP {status} {data[:300].decode(errors='replace')}"
                if status < 500:  # our request is wrong: asking again will not help
                    raise RetrievalError(f"retrieval server {self.url} rejected the request: {detail}")
                problem = detail
                continue
            try:
                result = json.loads(data)["result"]
                break
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                problem = f"malformed answer ({type(e).__name__}: {e})"
        else:
            raise RetrievalError(f"retrieval server {self.url} failed {self.retries + 1} times; last: {problem}")
        if (
            not isinstance(result, list)
            or len(result) != len(queries)
            or not all(isinstance(hits, list) for hits in result)
        ):
            raise RetrievalError(f"retrieval server {self.url} answered {str(result)[:100]} for {len(queries)} queries")
        try:
            return [[as_hit(h) for h in hits] for hits in result]
        except ValueError as e:
            raise RetrievalError(f"retrieval server {self.url} sent a malformed hit: {e}") from e


class TokenBucket:
    """A rate limit: `take()` returns at once while the bucket holds a token, else when the next one drips in.

    Tokens drip in at `rate` per second up to `burst`; over any span of t seconds at most burst + rate * t
    calls return.
    """

    def __init__(self, rate: float, burst: float, clock=time.monotonic, sleep=time.sleep):
        self.rate, self.burst, self.clock, self.sleep = rate, burst, clock, sleep
        self.tokens, self.last = burst, clock()
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:  # callers queue here: each leaves with its own token
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1:
                self.sleep((1 - self.tokens) / self.rate)
                self.tokens, self.last = 1.0, self.clock()
            self.tokens -= 1


class Batcher:
    """Gathers the searches of concurrent callers (the envs of concurrent episodes) into one call of `retriever`.

    The first caller of a batch waits up to `wait_s` for others (or until `max_queries` are asked), then sends
    them all as one `/retrieve` request (one per distinct topk); each caller gets its own rows back, or the error.
    """

    def __init__(self, retriever, wait_s: float = 0.002, max_queries: int = 256):
        self.retriever, self.wait_s, self.max_queries = retriever, wait_s, max_queries
        self.asked: list[_Ask] = []
        self.queries = 0  # in the asks gathered so far
        self.cond = threading.Condition()

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        ask = _Ask(list(queries), topk)
        with self.cond:
            self.asked.append(ask)
            self.queries += len(ask.queries)
            leads = len(self.asked) == 1
            if self.queries >= self.max_queries:
                self.cond.notify_all()
            if leads:
                self.cond.wait_for(lambda: self.queries >= self.max_queries, self.wait_s)
                batch, self.asked, self.queries = self.asked, [], 0
        if leads:
            self._send(batch)
        ask.answered.wait()
        if ask.error is not None:
            raise ask.error
        return ask.hits

    def _send(self, batch: list[_Ask]) -> None:
        by_topk: dict[int, list[_Ask]] = {}
        for ask in batch:
            by_topk.setdefault(ask.topk, []).append(ask)
        for topk, asks in by_topk.items():
            try:
                hits = self.retriever.search([q for a in asks for q in a.queries], topk)
                for a in asks:
                    a.hits, hits = hits[: len(a.queries)], hits[len(a.queries) :]
            except Exception as e:  # every caller of the request gets its error
                for a in asks:
                    a.error = e
            for a in asks:
                a.answered.set()


class _Ask:
    def __init__(self, queries: list[str], topk: int):
        self.queries, self.topk = queries, topk
        self.hits: list[list[Hit]] = []
        self.error: Exception | None = None
        self.answered = threading.Event()
