"""Load test of the live server (`python -m sae serve`) on the loopback interface, bounded in count and time.

    python bench/serve_load.py [--run RUN] [--requests 200] [--concurrency 4] [--max-seconds 60] [--endpoint activations]

Starts the server on a thread (a run folder, or by default a random dictionary on the embedded MiniLM at
blocks.3.hook_resid_pre), then `--concurrency` clients send `--requests` POSTs in all (each a different text),
stopping at `--max-seconds`. Prints requests/s, latency percentiles of the answered requests, and the status
counts (503: the queue was full; each client waits 50 ms and sends its next request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(run: str | None, queue_size: int):
    from activations import load_model
    from sae import SAEConfig, SparseAutoencoder
    from sae.serve import Inspector, Limits, create_app, load_inspector

    limits = Limits(queue_size=queue_size)
    if run:
        inspector, browser = load_inspector(run, limits=limits, references=0)
        return create_app(inspector, browser)
    model = load_model("minilm")
    sae = SparseAutoencoder(SAEConfig(d_in=384, n_latents=3072, k=32, hook_name="blocks.3.hook_resid_pre"), seed=0)
    return create_app(Inspector(model, sae, limits))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="run folder to serve (default: a random dictionary on MiniLM)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--endpoint", choices=("activations", "steer", "ablate"), default="activations")
    args = p.parse_args()

    import httpx
    import torch

    from sae.serve import ThreadedServer

    app = build(args.run, args.queue_size)
    words = "the model reads a short sentence about files lists numbers and strings".split()
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    sent = 0

    with ThreadedServer(app) as server:
        url = f"{server.url}/api/{args.endpoint}"
        deadline = time.monotonic() + args.max_seconds

        def client() -> None:
            nonlocal sent
            with httpx.Client(timeout=60) as http:
                while time.monotonic() < deadline:
                    with lock:
                        if sent >= args.requests:
                            return
                        i = sent
                        sent += 1
                    text = " ".join(words[(i + j) % len(words)] for j in range(8 + i % 8)) + f" {i}"
                    body: dict = {"text": text}
                    if args.endpoint != "activations":
                        body.update(latents=[i % 64], strengths=[4.0], max_new_tokens=8)
                    t = time.perf_counter()
                    r = http.post(url, json=body)
                    ms = (time.perf_counter() - t) * 1000
                    with lock:
                        codes[r.status_code] += 1
                        if r.status_code == 200:
                            latencies.append(ms)
                    if r.status_code == 503:
                        time.sleep(0.05)

        httpx.post(url, json={"text": "warm up", "latents": [0]}, timeout=60)  # first forward: lazy initialisation
        start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start

    done = sum(codes.values())
    lat = sorted(latencies)
    pct = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
    setting = f"{args.concurrency} clients, queue {args.queue_size}, torch threads {torch.get_num_threads()}"
    print(f"endpoint /api/{args.endpoint}, {setting}")
    print(f"requests {done} in {wall:.1f} s: {done / wall:.1f} requests/s, answered 200: {codes[200] / wall:.1f}/s")
    print(f"status counts: {dict(sorted(codes.items()))}")
    if lat:
        print(f"latency of 200 answers (ms): p50 {pct[49]:.0f}, p95 {pct[94]:.0f}, max {lat[-1]:.0f}")


if __name__ == "__main__":
    main()
