"""The search env against servers written by others, and the retrieval server against malformed requests.

Both sides are real: an HTTP server on 127.0.0.1 that answers in Search-R1's shapes
(documents without id or score, "title\\ntext" contents or separate title and text), and
`python -m envs.search serve`'s server class in-process, spoken to over raw sockets.
"""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from envs.base import Task
from envs.search.__main__ import main
from envs.search.bm25 import BM25Index
from envs.search.env import SearchEnv
from envs.search.retrieval import RetrievalClient, RetrievalError
from envs.search.server import RetrievalServer

PASSAGES = [
    {"id": "0", "contents": '"Mira Tolvane"\nMira Tolvane was born in Sodermark in 1931.'},
    {"id": "1", "contents": '"Sodermark"\nSodermark is a port city on the western coast.'},
    {"id": "2", "contents": '"Kell Varro"\nKell Varro wrote three novels about the sea.'},
]


def serve_in_thread(server: ThreadingHTTPServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server.server_address[1]


class SearchR1Shapes(BaseHTTPRequestHandler):
    """Answers /retrieve the way Search-R1's BM25 server with raw documents and its web-search servers do."""

    protocol_version = "HTTP/1.1"
    # contents: {"contents": "title\\ntext"}; title_text: {"title", "text"}; bare: documents without "document"
    shape = "contents"

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        topk = request["topk"]
        rows = []
        for _ in request["queries"]:
            docs = [{"contents": p["contents"]} for p in PASSAGES[:topk]]
            if self.shape == "title_text":
                docs = [
                    {"title": d["contents"].split("\n")[0].strip('"'), "text": d["contents"].split("\n", 1)[1]}
                    for d in docs
                ]
            rows.append(docs if self.shape == "bare" else [{"document": d} for d in docs])
        body = json.dumps({"result": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("shape", ["contents", "title_text", "bare"])
def test_the_env_reads_search_r1_answers_without_id_or_score(shape):
    handler = type("Handler", (SearchR1Shapes,), {"shape": shape})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = serve_in_thread(server)
    try:
        env = SearchEnv(RetrievalClient(f"http://127.0.0.1:{port}", timeout_s=10), topk=2)
        env.reset(Task("q0", "Where was Mira Tolvane born?", {"answers": ["Sodermark"], "gold_doc_ids": []}))
        first = env.step("<search>Mira Tolvane</search>")
        second = env.step("<search>Mira Tolvane birthplace</search>")
    finally:
        server.shutdown()
        server.server_close()
    info = first.info
    assert len(info["doc_ids"]) == 2 and len(set(info["doc_ids"])) == 2 and info["doc_scores"] == [None, None]
    assert (
        second.info["doc_ids"] == info["doc_ids"]
    )  # the fallback id is a hash of the contents: the same passage, the same id
    title = '"Mira Tolvane"' if shape != "title_text" else "Mira Tolvane"
    assert f"Doc 1(Title: {title}) Mira Tolvane was born in Sodermark in 1931." in first.observation
    assert info["answer_in_information"] is True


def test_a_malformed_hit_is_a_clear_retrieval_error():
    class Broken(SearchR1Shapes):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"result": [[{"document": {"url": "x"}}]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    port = serve_in_thread(server)
    try:
        with pytest.raises(
            RetrievalError,
            match=r'malformed hit: a document needs a string "contents" or "text", got fields \[\'url\'\]',
        ):
            RetrievalClient(f"http://127.0.0.1:{port}").search(["q"])
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- the retrieval server over raw sockets


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    return path


@pytest.fixture
def server(corpus):
    """The server of `python -m envs.search serve`, in this process, with a short read timeout."""
    srv = RetrievalServer(BM25Index(corpus, corpus.parent / "cache"), "127.0.0.1", 0, read_timeout_s=0.5)
    port = serve_in_thread(srv)
    yield port
    srv.shutdown()
    srv.server_close()


def exchange(port: int, raw: bytes, half_close: bool = True) -> bytes:
    """Send raw bytes, and read until the server closes the connection (at most 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return received


def request(body: bytes, headers: str) -> bytes:
    return (
        b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers.encode() + b"\r\n" + body
    )


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {}


GOOD = json.dumps({"queries": ["Mira Tolvane"], "topk": 1}).encode()
MALFORMED = {
    "content-length not a number": (
        request(GOOD, "Content-Length: abc\r\n"),
        400,
        "Content-Length must be a non-negative integer",
    ),
    "negative content-length": (
        request(GOOD, "Content-Length: -1\r\n"),
        400,
        "Content-Length must be a non-negative integer",
    ),
    "body over the limit": (request(GOOD, "Content-Length: 99999999999\r\n"), 413, "is over"),
    "body shorter than announced": (
        request(GOOD, "Content-Length: 100000\r\n"),
        400,
        "the body ended after",
    ),  # the client half-closes
    "malformed chunk size": (
        request(b"zz\r\n" + GOOD + b"\r\n0\r\n\r\n", "Transfer-Encoding: chunked\r\n"),
        400,
        "malformed chunk size",
    ),
    "not JSON": (request(b"{queries", "Content-Length: 8\r\n"), 422, "json_invalid"),
    "queries not a list": (
        request(b'{"queries": "q"}', "Content-Length: 16\r\n"),
        422,
        '"queries" must be a list of strings',
    ),
    "negative topk": (
        request(b'{"queries": ["q"], "topk": -2}', "Content-Length: 30\r\n"),
        422,
        '"topk" must be a positive integer',
    ),
    "a list for a body": (request(b'["q"]', "Content-Length: 5\r\n"), 422, "body must be a JSON object"),
    "unknown endpoint": (
        request(GOOD, f"Content-Length: {len(GOOD)}\r\n").replace(b"/retrieve", b"/search", 1),
        404,
        "no such endpoint",
    ),
    "GET": (b"GET /retrieve HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed"),
    "bad request line": (b"POST /retrieve HTTP/one\r\n\r\n", 400, "Bad request version"),
    "binary request line": (b"\x00\xff nonsense\r\n\r\n", 400, "Bad HTTP/0.9 request type"),
}


def good_answer(port: int) -> list:
    status, body = status_and_body(
        exchange(port, request(GOOD, f"Content-Length: {len(GOOD)}\r\nConnection: close\r\n"))
    )
    assert status == 200
    return body["result"]


@pytest.mark.parametrize("name", MALFORMED)
def test_each_malformed_request_gets_a_4xx_and_the_next_client_is_served(server, capfd, name):
    raw, status, detail = MALFORMED[name]
    answer = exchange(
        server, raw + request(GOOD, f"Content-Length: {len(GOOD)}\r\n")
    )  # a request behind it on the same connection ...
    got, body = status_and_body(answer)
    assert got == status and detail in str(body), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1  # ... is not answered: the connection closes after a 4xx
    if status == 422:
        assert (
            isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "body"
        )  # FastAPI's shape, as Search-R1's server
    assert good_answer(server)[0][0]["id"] == "0"
    assert "Traceback" not in capfd.readouterr().err


def test_a_stalled_client_is_answered_408_and_let_go(server, capfd):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(request(GOOD[:10], f"Content-Length: {len(GOOD)}\r\n"))  # ... and the rest never comes
        answer = b""
        while chunk := s.recv(65536):  # the server's read timeout (0.5 s) ends this, not the client's 10 s
            answer += chunk
    assert status_and_body(answer) == (408, {"detail": "the request did not arrive within 0.5 s"})
    assert good_answer(server)[0][0]["id"] == "0"
    assert "Traceback" not in capfd.readouterr().err


def test_chunked_bodies_and_kept_alive_connections(server):
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(GOOD[i : i + 7]), GOOD[i : i + 7]) for i in range(0, len(GOOD), 7))
    chunked = request(chunks + b"0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked\r\n")
    plain = request(GOOD, f"Content-Length: {len(GOOD)}\r\nConnection: close\r\n")
    answer = exchange(server, chunked + plain)  # two requests on one connection, both answered
    parts = re.split(rb"(?=HTTP/1\.1 )", answer)[1:]
    assert len(parts) == 2 and [status_and_body(p) for p in parts] == [status_and_body(parts[1])] * 2
    assert status_and_body(parts[0])[1]["result"][0][0]["id"] == "0"  # a bare document: no return_scores


def test_a_client_that_resets_mid_request_leaves_no_traceback(server, capfd):
    s = socket.create_connection(("127.0.0.1", server), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
    s.sendall(b"POST /retrieve HTTP/1.1\r\nContent-")
    s.close()
    assert good_answer(server)[0][0]["id"] == "0"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"id": "0", "contents": 7}', 'needs a string "contents" or "text"'),
        ('{"id": "0", "contents": "x"', "Expecting"),
        ("[1, 2]", "a document must be a JSON object"),
    ],
)
def test_a_bad_corpus_is_one_line_with_its_line_number(tmp_path, capsys, line, why):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(PASSAGES[0]) + "\n" + line + "\n")
    assert main(["serve", "--corpus", str(corpus), "--port", "0", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {corpus}:2: not a corpus line") and why in err and err.count("\n") == 1, err


def test_a_corpus_with_title_and_text_and_no_ids_is_served(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"title": "T", "text": p["contents"].split("\n", 1)[1]}) + "\n" for p in PASSAGES)
    )
    hits = BM25Index(corpus, tmp_path / "cache").search(["Mira Tolvane born"], 1)[0]
    assert (
        hits[0]["document"]["contents"] == "T\nMira Tolvane was born in Sodermark in 1931."
        and len(hits[0]["document"]["id"]) == 16
    )


def test_make_world_fails_when_the_world_has_fewer_questions(tmp_path, capsys):
    assert main(["make-world", "--out", str(tmp_path / "w"), "--people", "4", "--questions", "100000"]) == 2
    assert re.fullmatch(
        r"error: asked for 100000 questions, but a world of 4 people with hops \[1, 2\] gave only \d+ distinct ones: "
        r"ask for at most \d+ or more people\n",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "w").exists()
