"""Command line of the search environment.

    python -m envs.search make-world --seed 0 --out worlds/w0 [--people 60 --hops 1 2 --distractors 1 --questions 200]
    python -m envs.search serve --corpus worlds/w0/corpus.jsonl --port 8000
        [--host 127.0.0.1 --topk 3 --read-timeout 30]

`serve` builds (or loads from the cache) the BM25 index, prints one line
"serving N passages on http://HOST:PORT/retrieve" once it accepts requests, and
answers Search-R1's POST /retrieve until stopped. --port 0 picks a free port.
"""

from __future__ import annotations

import argparse
import sys

from envs.search.world import WorldConfig, write_world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.search", description="search-agent environment tools")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("make-world", help="write a fictional question world: corpus.jsonl and questions.jsonl")
    defaults = WorldConfig()
    world.add_argument("--seed", type=int, default=defaults.seed)
    world.add_argument("--out", required=True, help="output directory")
    world.add_argument(
        "--people",
        type=int,
        default=defaults.people,
        help="people; cities, orgs, works and countries scale with it (about 2 passages per person)",
    )
    world.add_argument(
        "--hops", type=int, nargs="+", default=defaults.hops, help="hop counts (1-4) to draw questions from"
    )
    world.add_argument("--distractors", type=int, default=defaults.distractors, help="namesakes per person")
    world.add_argument("--questions", type=int, default=defaults.questions, help="distinct questions to write")

    serve = sub.add_parser("serve", help="serve BM25 retrieval over a corpus with Search-R1's /retrieve API")
    serve.add_argument(
        "--corpus", required=True, help='corpus JSONL: {"id", "contents": "\\"Title\\"\\ntext"} per line'
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--topk", type=int, default=3, help="passages per query when a request gives no topk")
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a connection may stall mid-request or stay idle before it is closed (default 30)",
    )
    serve.add_argument(
        "--delay-ms", type=float, default=0.0, help="added to every answer: a slower retriever's latency (benchmarks)"
    )
    serve.add_argument(
        "--cache-dir", default="", help="where the index is cached (default ~/.cache/selfcorrect/search)"
    )
    args = parser.parse_args(argv)

    if args.command == "make-world":
        cfg = WorldConfig(args.seed, args.people, args.hops, args.distractors, args.questions)
        try:
            out = write_world(cfg, args.out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out / 'corpus.jsonl'} and {out / 'questions.jsonl'}")
        return 0

    from envs.search.bm25 import BM25Index
    from envs.search.server import RetrievalServer

    try:
        index = BM25Index(args.corpus, args.cache_dir or None)
        server = RetrievalServer(index, args.host, args.port, args.topk, args.read_timeout, args.delay_ms / 1000)
    except (OSError, ValueError) as e:  # a bad corpus line, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {len(index)} passages on http://{host}:{port}/retrieve", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
