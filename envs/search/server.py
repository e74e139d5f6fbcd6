"""A retrieval server with Search-R1's HTTP API, so many rollout workers share one index.

    python -m envs.search serve --corpus corpus.jsonl --port 8000

    POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    ->              {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}   # one list per query

With "return_scores": false each hit is the bare document, as in Search-R1. A bad
request gets HTTP 400 and {"error": "..."}. Answers carry a `Server-Timing: search;dur=MS`
header (the time spent searching) and connections are kept alive (HTTP/1.1). The standard library's threading HTTP
server is enough: scoring runs in numpy, which releases the GIL.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from envs.search.bm25 import BM25Index

MAX_BODY_BYTES = 16 << 20


def parse_request(body: bytes, default_topk: int) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) of a /retrieve body; ValueError says what is wrong with it."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"body is not JSON: {e}") from e
    if not isinstance(request, dict):
        raise ValueError("body must be a JSON object")
    queries = request.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise ValueError('"queries" must be a list of strings')
    topk = request.get("topk") or default_topk
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ValueError('"topk" must be a positive integer')
    return queries, topk, bool(request.get("return_scores", False))


class RetrievalServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive

    def __init__(self, index: BM25Index, host: str = "127.0.0.1", port: int = 8000, default_topk: int = 3):
        self.index, self.default_topk = index, default_topk
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: RetrievalServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; without this loopback adds ~40 ms

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/retrieve":
            return self._send(404, {"error": f"no such endpoint {self.path!r}; use POST /retrieve"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self._send(413, {"error": f"body of {length} bytes is over {MAX_BODY_BYTES}"})
        try:
            queries, topk, return_scores = parse_request(self.rfile.read(length), self.server.default_topk)
        except ValueError as e:
            return self._send(400, {"error": str(e)})
        start = time.perf_counter()
        try:
            hits = self.server.index.search(queries, topk)
        except Exception as e:  # noqa: BLE001 (the client must get an answer, not a dropped connection)
            return self._send(500, {"error": f"{type(e).__name__}: {e}"})
        search_ms = (time.perf_counter() - start) * 1000
        if not return_scores:
            hits = [[h["document"] for h in row] for row in hits]
        # The standard Server-Timing header lets a client tell search time from HTTP and JSON time.
        self._send(200, {"result": hits}, {"Server-Timing": f"search;dur={search_ms:.3f}"})

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:  # no access line per request (a rollout sends many); errors still print
        pass
