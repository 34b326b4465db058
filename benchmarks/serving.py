"""Protected vs unprotected MobileNetV2 behind the same v2 server, under the same concurrent load.

    python benchmarks/serving.py [--clients 8] [--requests 25] [--batch 1] [--rounds 3]

One server process serves both models; client threads send binary-tensor requests. Phases
alternate (protected, unprotected, ...) so drift hits both alike. Prints throughput and p50/p99
latency per model and the protected/unprotected throughput ratio (goal >= 0.97).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fakegradient import models, protect
from fakegradient.modelfile import write_bundle
from fakegradient.serving.client import InferenceClient


def export_models(root: Path) -> None:
    weights = models.get_weights(models.EMBEDDED_MODEL, models.EMBEDDED_WEIGHTS)
    model = models.load(models.EMBEDDED_MODEL, weights=weights)
    protected, key = protect(model)
    (root / "protected").mkdir()
    write_bundle(root / "protected", protected, key, input_size=[3, 224, 224],
                 extra={"preprocess": models.preprocess_spec(weights), "categories": weights.meta["categories"]})
    (root / "unprotected").mkdir()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(root / "unprotected" / "model.onnx"),
                      dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def phase(url: str, name: str, clients: int, requests: int, batch: int) -> tuple[float, list[float]]:
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)

    def worker(_):
        client = InferenceClient(url)
        model = client.model(name)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(model, x)
            times.append(time.perf_counter() - start)
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for times in pool.map(worker, range(clients)) for t in times]
    return clients * requests * batch / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads in the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_models(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "fakegradient.cli", "serve", str(root / "protected"),
                                   str(root / "unprotected"), "--port", str(port), "--threads", str(args.threads)])
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            for name in ("protected", "unprotected"):
                phase(url, name, args.clients, 3, args.batch)  # warm-up
            results: dict[str, tuple[list[float], list[float]]] = {"protected": ([], []), "unprotected": ([], [])}
            for _ in range(args.rounds):
                for name in ("protected", "unprotected"):
                    throughput, latencies = phase(url, name, args.clients, args.requests, args.batch)
                    results[name][0].append(throughput)
                    results[name][1].extend(latencies)
        finally:
            server.terminate()
            server.wait()
    print(f"{args.clients} clients x {args.requests} requests x batch {args.batch}, {args.rounds} interleaved rounds")
    print(f"{'model':<12} {'images/s (median of rounds)':>28} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (throughputs, latencies) in results.items():
        p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
        print(f"{name:<12} {statistics.median(throughputs):>28.1f} {p50:>8.1f} {p99:>8.1f}")
    ratio = statistics.median(results["protected"][0]) / statistics.median(results["unprotected"][0])
    print(f"protected / unprotected throughput: {ratio:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
