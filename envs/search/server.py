"""A retrieval server with Search-R1's HTTP API, so many rollout workers share one index.

    python -m envs.search serve --corpus corpus.jsonl --port 8000

    POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    ->              {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}   # one list per query

With "return_scores": false each hit is the bare document, as in Search-R1. Errors are
answered as Search-R1's FastAPI server answers them: a body that breaks the schema gets
422 and {"detail": [{"type", "loc", "msg"}]}; a broken HTTP request (a Content-Length that
is not a non-negative integer, a malformed chunk, a body that ends early) 400, a body over
16 MiB 413, a client that stalls mid-request 408 after `read_timeout_s`, each with
{"detail": "..."}, and the connection is closed after any of them. Bodies may come with
Content-Length or chunked. No input makes the server print a traceback: what goes wrong
is one line on stderr, and the next client is served.

Answers carry a `Server-Timing: search;dur=MS` header (the time spent searching) and
connections are kept alive (HTTP/1.1) until idle for `read_timeout_s`. The standard
library's threading HTTP server is enough: scoring runs in numpy, which releases the GIL.
"""

from __future__ import annotations

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from envs.search.bm25 import BM25Index

MAX_BODY_BYTES = 16 << 20
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,8}")


class BadRequest(Exception):
    """A request answered with `status` and {"detail": detail}; the connection is closed after it."""

    def __init__(self, status: int, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


def schema_error(kind: str, loc: list, msg: str) -> BadRequest:
    """FastAPI's 422 for a body that does not fit the request model."""
    return BadRequest(422, [{"type": kind, "loc": ["body", *loc], "msg": msg}])


def parse_request(body: bytes, default_topk: int) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) of a /retrieve body; BadRequest (422) says what is wrong with it."""
    try:
        request = json.loads(body)
    except json.JSONDecodeError as e:
        raise schema_error("json_invalid", [e.pos], f"JSON decode error: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise schema_error("json_invalid", [e.start], "JSON decode error: not UTF-8") from e
    if not isinstance(request, dict):
        raise schema_error("model_attributes_type", [], "body must be a JSON object")
    queries = request.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise schema_error("list_type", ["queries"], '"queries" must be a list of strings')
    topk = request.get("topk") or default_topk
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise schema_error("int_type", ["topk"], '"topk" must be a positive integer')
    return queries, topk, bool(request.get("return_scores", False))


class RetrievalServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive

    def __init__(
        self,
        index: BM25Index,
        host: str = "127.0.0.1",
        port: int = 8000,
        default_topk: int = 3,
        read_timeout_s: float = 30.0,
        delay_s: float = 0.0,  # added to every answer: a slower retriever's latency (a dense one's), for benchmarks
    ):
        if not read_timeout_s > 0:
            raise ValueError(f"the read timeout must be positive seconds, got {read_timeout_s}")
        self.index, self.default_topk, self.read_timeout_s = index, default_topk, read_timeout_s
        self.delay_s = delay_s
        self.requests = self.queries = 0  # /retrieve requests answered, and the queries in them
        super().__init__((host, port), _Handler)

    def handle_error(self, request, client_address) -> None:
        """One line instead of socketserver's traceback (a client that resets its connection, say)."""
        error = sys.exc_info()[1]
        print(
            f"retrieval server: request from {client_address[0]} failed: {type(error).__name__}: {error}",
            file=sys.stderr,
        )


class _Handler(BaseHTTPRequestHandler):
    server: RetrievalServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; without this loopback adds ~40 ms
    default_request_version = "HTTP/1.0"  # so a request line too broken to name its version still gets a status line

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # every read of the connection, so a stalled client frees its thread
        super().setup()

    def do_POST(self) -> None:
        try:
            if self.path.rstrip("/") != "/retrieve":
                raise BadRequest(404, f"no such endpoint {self.path!r}; use POST /retrieve")
            self._retrieve(self._read_body())
        except BadRequest as e:
            self._send(e.status, {"detail": e.detail}, close=True)
        except TimeoutError:
            self._send(
                408, {"detail": f"the request did not arrive within {self.server.read_timeout_s:g} s"}, close=True
            )

    def do_GET(self) -> None:
        self._send(405, {"detail": "Method Not Allowed; use POST /retrieve"}, close=True)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = (self.headers.get("Content-Length") or "0").strip()
        if not length.isascii() or not length.isdigit():
            raise BadRequest(400, f"Content-Length must be a non-negative integer, got {length!r}")
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, f"body of {length} bytes is over {MAX_BODY_BYTES}")
        return self._read_exactly(int(length))

    def _read_exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise BadRequest(400, f"the body ended after {len(data)} of {n} bytes")
        return data

    def _read_chunked(self) -> bytes:
        """A chunked body (RFC 9112 7.1): hex size lines, each chunk then CRLF, a 0 chunk,
        trailers up to an empty line."""
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024)
            size = size_line.split(b";")[0].strip()  # chunk extensions are ignored
            if not _CHUNK_SIZE.fullmatch(size):
                raise BadRequest(400, f"malformed chunk size line {size_line[:40]!r}")
            if len(body) + int(size, 16) > MAX_BODY_BYTES:
                raise BadRequest(413, f"chunked body over {MAX_BODY_BYTES} bytes")
            if int(size, 16) == 0:
                break
            body += self._read_exactly(int(size, 16))
            if self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise BadRequest(400, "a chunk is not followed by CRLF")
        for _ in range(64):  # trailer fields, ignored; bounded
            if self.rfile.readline(1024) in (b"\r\n", b"\n", b""):
                return bytes(body)
        raise BadRequest(400, "too many trailer lines after the last chunk")

    def _retrieve(self, body: bytes) -> None:
        queries, topk, return_scores = parse_request(body, self.server.default_topk)
        start = time.perf_counter()
        try:
            hits = self.server.index.search(queries, topk)
        except Exception as e:  # noqa: BLE001 (the client must get an answer, not a dropped connection)
            return self._send(500, {"detail": f"{type(e).__name__}: {e}"})
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        search_ms = (time.perf_counter() - start) * 1000
        self.server.requests += 1  # one thread per connection: a lost update only undercounts
        self.server.queries += len(queries)
        if not return_scores:
            hits = [[h["document"] for h in row] for row in hits]
        # The standard Server-Timing header lets a client tell search time from HTTP and JSON time.
        self._send(200, {"result": hits}, {"Server-Timing": f"search;dur={search_ms:.3f}"})

    def _send(self, code: int, payload: dict, headers: dict | None = None, close: bool = False) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:  # what is left of a rejected request's bytes cannot be told from the next request's
                self.send_header("Connection", "close")
                self.close_connection = True
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client left before its answer: nothing to tell it
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own rejections (a broken request line, too many headers), in JSON like ours."""
        self.log_error("code %d, message %s", code, message)
        self._send(code, {"detail": message or self.responses.get(code, ("error",))[0]}, close=True)

    def log_request(
        self, code="-", size="-"
    ) -> None:  # no access line per request (a rollout sends many); errors still print
        pass

    def log_error(self, format, *args) -> None:
        if format.startswith("Request timed out"):  # an idle kept-alive connection closed: routine, not an error
            return
        super().log_error(format, *args)
