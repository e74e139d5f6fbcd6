"""Retrieval benchmark: batched BM25 queries per second, in process and through the retrieval server.

Run from the repository root:

    python benchmarks/retrieval.py                   # a ~100k-passage generated world (about a minute on 2 cores)
    python benchmarks/retrieval.py --people 5000     # smaller, quicker

A world of --people people (about 2 passages each) is generated and indexed, then
the world's questions are sent in batches of each --batch size:

  in-process   BM25Index.search on a batch, as a rollout worker with a local index
  server       RetrievalClient.search on the same batch: one POST /retrieve to `python -m envs.search serve`
               on 127.0.0.1 (its own process), as workers sharing one index
  overhead     client wall time - the server's own search time (its Server-Timing header) per request:
               HTTP on loopback, JSON both ways, the client; median over requests, in ms

Each batch is sent in process and then through the server, --repeat times; q/s is over all passes.
Targets: >= 500 queries/s in process at the largest batch; overhead < 2 ms per batched request.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envs.search.bm25 import BM25Index
from envs.search.retrieval import RetrievalClient
from envs.search.world import WorldConfig, write_world

ROOT = Path(__file__).resolve().parents[1]

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument(
    "--people", type=int, default=48_800, help="world size: passages are about 2.05 x people (48,800 -> 100k)"
)
p.add_argument("--queries", type=int, default=2000, help="questions to send per pass")
p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256], help="queries per request")
p.add_argument("--topk", type=int, default=3)
p.add_argument("--repeat", type=int, default=3, help="timed passes per row (median)")
p.add_argument(
    "--dir", default="", help="keep the world and index here (reused on the next run); default a temporary directory"
)
args = p.parse_args()

work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
t0 = time.perf_counter()
world = work / f"world-{args.people}"
if not (world / "questions.jsonl").exists():
    write_world(WorldConfig(seed=0, people=args.people, hops=[1, 2], questions=args.queries), world)
t1 = time.perf_counter()
index = BM25Index(world / "corpus.jsonl", work / "cache")
t2 = time.perf_counter()
questions = [json.loads(line)["question"] for line in (world / "questions.jsonl").read_text().splitlines()][
    : args.queries
]
print(
    f"corpus: {len(index):,} passages; world {t1 - t0:.1f} s, index "
    f"build or load {t2 - t1:.1f} s; {len(questions)} queries per pass"
)

cmd = [
    sys.executable,
    "-m",
    "envs.search",
    "serve",
    "--corpus",
    str(world / "corpus.jsonl"),
    "--port",
    "0",
    "--cache-dir",
    str(work / "cache"),
]
server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
try:
    line = server.stdout.readline()
    url = re.search(r"http://\S+/retrieve", line).group(0)
    client = RetrievalClient(url, timeout_s=60)

    def timed(search, queries) -> float:
        start = time.perf_counter()
        search(queries, args.topk)
        return time.perf_counter() - start

    rows = []
    for batch in args.batch:
        n = len(questions) if batch > 1 else min(300, len(questions))  # single queries: a shorter pass
        batches = [questions[i : i + batch] for i in range(0, n, batch)]
        for search in (index.search, client.search):  # warm-up: page in the index, open the connection
            timed(search, batches[0])
        local, remote, overhead = [], [], []
        for _ in range(args.repeat):
            for queries in batches:
                local.append(timed(index.search, queries))
                remote.append(timed(client.search, queries))
                overhead.append(remote[-1] - client.last_search_ms / 1000)  # all but the server's own search time
        rows.append(
            (batch, n * args.repeat / sum(local), n * args.repeat / sum(remote), statistics.median(overhead) * 1000)
        )
finally:
    server.kill()
    server.wait(timeout=10)

print("\n| batch | in-process q/s | server q/s | server overhead ms/request |")
print("|---:|---:|---:|---:|")
for batch, local_qps, remote_qps, overhead in rows:
    print(f"| {batch} | {local_qps:,.0f} | {remote_qps:,.0f} | {overhead:.2f} |")
batch, local_qps = rows[-1][:2]
print(f"\nin-process at batch {batch}: {local_qps:,.0f} q/s (target >= 500): {'PASS' if local_qps >= 500 else 'FAIL'}")
for batch, _, _, overhead in rows:
    print(
        f"server overhead at batch {batch}: {overhead:.2f} ms/request "
        f"(target < 2): {'PASS' if overhead < 2 else 'FAIL'}"
    )
