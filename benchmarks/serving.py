"""Served throughput against the limit: protected vs unprotected MobileNetV2, with and without dynamic batching;
the cost of metrics and the access log; health latency under hostile clients.

    python benchmarks/serving.py [--clients 32] [--requests 20] [--rounds 3] [--threads 0] [--device cuda]
                                 [--transports rest,grpc] [--settings 'no batching']
    python benchmarks/serving.py --overhead [--rounds 9] [--clients 32] [--requests 20] [--transports rest,grpc]
    python benchmarks/serving.py --recording-cost
    python benchmarks/serving.py --hostile [--seconds 30] [--big-json 4] [--slow-bodies 16] [--idle 500]
                                           [--big-batches 32] [--lockout 4]

The limit: in-process ONNX Runtime throughput of the same model file, with the server's session options and
threads, at the best batch size (``--batch-sizes``); measured again just before and after every served
phase (the server idle), as a shared machine's speed drifts by tens of percent within minutes. Then one
server process per batching setting serves both models; ``--clients`` client threads (one keep-alive
connection each) send ``--requests`` batch-1 requests each with the binary tensor extension (REST) or raw
tensor bytes (gRPC, ``--grpc-port``). Phases alternate (protected and unprotected, over each transport) so
drift hits all alike. Prints per setting and model: images/s
(median of rounds), served / in-process (median and range of the rounds' ratios, each over the limit
measured around its phase), p50/p99 latency, and protected / unprotected (goal >= 0.97; served /
in-process goal >= 0.8 on CPU). The client threads share the machine with the server: on a small machine
they take part of the CPU the server needs, so the CPU column also gives in-process / server CPU seconds per
image (the server process's user + system time over its phase, all threads; Linux /proc): the server's own
overhead, whatever the clients cost.

``--overhead``: what metrics and the access log cost. Three servers of the protected model run at once, no
batching, the same other options: ``off`` (``--no-metrics``), ``metrics`` (the default) and ``metrics+log``
(``--access-log``, its stderr redirected to a file, as an operator keeps it). Every round runs the same phase
as above (``--clients`` batch-1 clients, binary tensors) over each transport against each server, the servers'
order rotated from round to round so drift hits all alike (a multiple of 3 rounds puts each server in each
position equally often). Prints per transport and server: images/s (median
of rounds), the paired per-round ratios metrics / off and metrics+log / off (median [min-max]), the same ratios of
the server process's CPU seconds per image (less sensitive to where the clients' threads ran), the rounds, and
whether the median cost (1 - ratio) is <= 3 %. No in-process limit is measured in this mode.

``--recording-cost``: the same costs without a server, in process: µs per request spent recording metrics, the
access log's extra µs on the event loop and its writer thread's µs per line (format, one write to /dev/null).

``--hostile``: the server with its default limits, probed on /v2/health/live (a fresh connection every
20 ms, as a liveness probe does) and used by one well-behaved client (a 1-image request every 100 ms),
first alone, then while hostile clients run: ``--big-json`` clients
sending ~62 MiB JSON requests in a loop, ``--slow-bodies`` connections sending all but the last bytes
of a ~63 MiB body then stalling, ``--idle`` connections that never send anything, ``--big-batches``
clients sending 64-image requests, ``--lockout`` connections each sending a head that declares the largest
body (64 MiB) and one byte of it, then idling (reconnecting when closed: red team round 3 locked all clients
out with 4 of these). Prints the probe's p50/p99/max both ways, the well-behaved client's answers, the
attackers' answers and the server's resident memory (before, peak, after; Linux /proc).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import logging
import math
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fakegradient import defaults, models, protect
from fakegradient.atomic import write_bytes_atomic
from fakegradient.bundle import PREFIX
from fakegradient.integrity import seal_file
from fakegradient.machine import cpu_model
from fakegradient.modelfile import write_bundle
from fakegradient.serving.onnx_model import RuntimeOptions, load_model_dir
from fakegradient.serving.settings import usable_cores

sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))
from render_docs import spread  # stdlib only: per-round ratios printed as the docs render them

MODELS = ("protected", "unprotected")


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
    mark_baseline(root / "unprotected" / "model.onnx")
    seal_file(root / "unprotected" / "model.onnx")  # the whole-model digest the server checks


def mark_baseline(path: Path) -> None:
    """Label the unprotected export so that the server opens it (it serves only files with a fingerprint): a
    placeholder fingerprint, no secret behind it; the baseline's clients read its outputs directly."""
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {PREFIX + "fingerprint": "unprotected-baseline"})
    onnx.save(graph, str(path))


def in_process(root: Path, name: str, args: argparse.Namespace) -> Callable[[int, int], Rate]:
    """``measure(batch size, concurrent runs)`` → :class:`Rate` of ONNX Runtime over ``--seconds-per-size`` on the
    model file as the server opens it (same session options and threads), 1 or ``--max-runs`` runs at once
    as the server may."""
    runtime = RuntimeOptions(threads=args.threads, cpu_arena=args.cpu_arena, device=args.device)
    model = load_model_dir(root / name, runtime=runtime.for_runs(args.max_runs))  # as the server resolves it
    inputs = {size: np.random.default_rng(size).random((size, 3, 224, 224), dtype=np.float32)
              for size in args.batch_sizes}

    def loop(x: np.ndarray, end: float) -> int:
        count = 0
        while time.perf_counter() < end:
            model.infer(x)
            count += len(x)
        return count

    def measure(size: int, runs: int) -> Rate:
        x = inputs[size]
        model.infer(x)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()  # nothing else runs in this process meanwhile
        with ThreadPoolExecutor(runs) as pool:
            counts = list(pool.map(loop, [x] * runs, [start + args.seconds_per_size] * runs))
        return Rate(sum(counts) / (time.perf_counter() - start), (time.process_time() - cpu) / sum(counts))

    return measure


@dataclass(frozen=True)
class Rate:
    """images/s, and CPU seconds (all threads of the process) per image."""
    per_s: float
    cpu_per_image: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sweep(measure: Callable[[int, int], Rate], args: argparse.Namespace) -> dict[tuple[int, int], float]:
    """(batch size, runs at once) → images/s, median of ``--rounds`` interleaved measurements."""
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.rounds):
        for size in args.batch_sizes:
            for runs in sorted({1, args.max_runs}):
                samples.setdefault((size, runs), []).append(measure(size, runs).per_s)
    return {setting: statistics.median(rates) for setting, rates in samples.items()}


def phase(address: tuple[str, int], name: str, clients: int, requests: int, batch: int) -> tuple[float, list[float]]:
    """(images/s, latencies) of ``clients`` threads each sending ``requests`` binary requests of ``batch`` images
    on one keep-alive connection; every answer is checked to be a 200 holding the outputs."""
    body, headers = binary_body(batch)
    barrier = threading.Barrier(clients + 1)

    def worker(_):
        conn = http.client.HTTPConnection(*address, timeout=120)
        times = []
        barrier.wait()
        for _ in range(requests):
            start = time.perf_counter()
            conn.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            times.append(time.perf_counter() - start)
            if response.status != 200 or len(answer) < batch * 1000 * 4:
                raise RuntimeError(f"{name}: answer {response.status}: {answer[:200]!r}")
        conn.close()
        return times

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        barrier.wait()  # connections made, threads ready: the clock starts
        start = time.perf_counter()
        latencies = [t for future in futures for t in future.result()]
    return clients * requests * batch / (time.perf_counter() - start), latencies


def grpc_phase(address: tuple[str, int], name: str, clients: int, requests: int,
               batch: int) -> tuple[float, list[float]]:
    """:func:`phase` over gRPC: ``clients`` threads, one connection each, ModelInfer with raw tensor bytes."""
    import grpc

    from fakegradient.serving import open_inference_pb2 as pb

    x = np.random.default_rng(batch).random((batch, 3, 224, 224), dtype=np.float32)
    message = pb.ModelInferRequest(model_name=name)
    message.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    payload = message.SerializeToString()
    barrier = threading.Barrier(clients + 1)

    def worker(_):
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 2**30)]
        with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=options) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=pb.ModelInferResponse.FromString)
            grpc.channel_ready_future(channel).result(timeout=60)  # connected before the clock starts
            times = []
            barrier.wait()
            for _ in range(requests):
                start = time.perf_counter()
                answer = call(payload, timeout=120)
                times.append(time.perf_counter() - start)
                if len(answer.raw_output_contents[0]) < batch * 1000 * 4:
                    raise RuntimeError(f"{name}: short gRPC answer")
        return times

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        latencies = [t for future in futures for t in future.result()]
    return clients * requests * batch / (time.perf_counter() - start), latencies


PHASES = {"rest": phase, "grpc": grpc_phase}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def headroom(args: argparse.Namespace) -> list[str]:
    """``--max-inflight`` twice the clients: a client sends its next request as soon as it has an answer, before
    the server has released the slot of the last one (gRPC then answers RESOURCE_EXHAUSTED at exactly the limit);
    the benchmark measures speed, not the limit (``--hostile`` does)."""
    return ["--max-inflight", str(2 * args.clients)]


def start_server(root: Path, names: list[str], threads: int, *options: str,
                 stderr: Any = None) -> tuple[subprocess.Popen, str]:
    """The server (default limits unless ``options``; its stderr to ``stderr``, a file, if given) on a free
    port, once ready: (process, url)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fakegradient.cli", "serve", *(str(root / n) for n in names),
                               "--port", str(port), "--threads", str(threads), *options], stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
            return server, url
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the server {' '.join(options)} exited with {server.returncode}") from None
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"the server {' '.join(options)} was not ready in 120 s")


def served(args: argparse.Namespace, root: Path, options: list[str],
           limit: dict[str, Callable[[], Rate]]) -> dict[str, dict[str, Any]]:
    """model → {rate: median images/s over the rounds, ratios: served / in-process per round, cpu_ratios:
    in-process / server CPU seconds per image per round, latencies} for one server started with ``options``.
    Each round's limit is measured just before and after its phase (the server idle), and the round's ratios
    are over their mean: the machine's drift hits both alike. The CPU ratio leaves out what the clients spend
    (on a small machine they compete with the server): it is the server's own overhead per image."""
    grpc_port = free_port()
    if "grpc" in args.transports:
        options = [*options, "--grpc-port", str(grpc_port)]
    server, url = start_server(root, list(MODELS), args.threads, *options)
    addresses = {"rest": ("127.0.0.1", int(url.rsplit(":", 1)[1])), "grpc": ("127.0.0.1", grpc_port)}
    keys = [(transport, name) for name in MODELS for transport in args.transports]
    results: dict[tuple[str, str], dict[str, list[float]]] = {
        key: {"rates": [], "ratios": [], "cpu_ratios": [], "latencies": []} for key in keys}
    try:
        for transport, name in keys:
            PHASES[transport](addresses[transport], name, args.clients, 2, args.batch)  # warm-up
        for _ in range(args.rounds):
            for transport, name in keys:
                before, cpu = limit[name](), cpu_seconds(server.pid)
                rate, latencies = PHASES[transport](addresses[transport], name, args.clients, args.requests,
                                                    args.batch)
                served_cpu = (cpu_seconds(server.pid) - cpu) / (args.clients * args.requests * args.batch)
                after = limit[name]()
                results[transport, name]["rates"].append(rate)
                results[transport, name]["ratios"].append(rate / ((before.per_s + after.per_s) / 2))
                results[transport, name]["cpu_ratios"].append(
                    (before.cpu_per_image + after.cpu_per_image) / 2 / served_cpu)
                results[transport, name]["latencies"].extend(latencies)
    finally:
        server.terminate()
        server.wait()
    return {key: {"rate": statistics.median(r["rates"]), "ratios": r["ratios"], "cpu_ratios": r["cpu_ratios"],
                  "latencies": r["latencies"]} for key, r in results.items()}


def throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    limit, sweeps, rows = {}, {}, []
    for name in MODELS:
        measure = in_process(root, name, args)
        rates = sweep(measure, args)
        best = max(rates, key=rates.get)
        limit[name] = functools.partial(measure, *best)
        sweeps[name] = {f"{b}x{r}": rate for (b, r), rate in rates.items()} | {"limit": f"{best[0]}x{best[1]}"}
        print(f"in-process ONNX Runtime, {name} (images/s at batch size x runs at once): "
              + ", ".join(f"{b}x{r}: {rate:.1f}" for (b, r), rate in rates.items())
              + f" -> the limit: {best[0]}x{best[1]}, measured again around every served phase")
    common = (["--max-runs", str(args.max_runs), "--device", args.device, "--http", args.http,
               *headroom(args)] + (["--cpu-arena"] if args.cpu_arena else []))
    settings = {"dynamic batching": ["--dynamic-batching", "--batch-rows", str(args.batch_rows), "--batch-delay-ms",
                                     str(args.batch_delay_ms), *common],
                "no batching": ["--no-dynamic-batching", *common]}
    print(f"served: {args.clients} concurrent clients x {args.requests} requests x batch {args.batch} (binary "
          f"tensors, keep-alive), {args.rounds} interleaved rounds; server --http {args.http} --device {args.device} "
          f"--threads {args.threads} --max-runs "
          f"{args.max_runs} {' '.join(headroom(args))}{' --cpu-arena' if args.cpu_arena else ''}, other limits "
          "default")
    print(f"{'setting':<18} {'transport':<9} {'model':<12} {'images/s':>9} {'served/in-process [min-max]':>28} "
          f"{'CPU/image in-process/served':>28} {'p50 ms':>8} {'p99 ms':>8}")
    for setting, options in settings.items():
        if setting not in args.settings:
            continue
        results = served(args, root, options + args.server_options, limit)
        for (transport, name), r in results.items():
            p50, p99 = np.percentile(r["latencies"], [50, 99]) * 1e3
            ratios, cpu = spread(r["ratios"]), spread(r["cpu_ratios"])
            print(f"{setting:<18} {transport:<9} {name:<12} {r['rate']:>9.1f} {ratios:>28} {cpu:>28} {p50:>8.1f} "
                  f"{p99:>8.1f}")
            rows.append({"setting": setting, "transport": transport, "model": name, "images_per_s": r["rate"],
                         "served_over_in_process": r["ratios"], "cpu_in_process_over_served": r["cpu_ratios"],
                         "p50_ms": p50, "p99_ms": p99})
        for transport in args.transports:
            ratio = results[transport, "protected"]["rate"] / results[transport, "unprotected"]["rate"]
            print(f"{setting:<18} {transport:<9} protected / unprotected throughput: {ratio:.3f} (goal >= 0.97)")
    return {"mode": "throughput", "in_process_images_per_s": sweeps, "served": rows,
            "threads_per_run": RuntimeOptions(threads=args.threads).for_runs(args.max_runs).threads}


# --- the cost of metrics and the access log ----------------------------------------------------------------

OVERHEAD_SERVERS = {"off": ["--no-metrics"], "metrics": [], "metrics+log": ["--access-log"]}
OVERHEAD_CONTROL = {"off": ["--no-metrics"], "metrics+log": ["--access-log"], "off-again": ["--no-metrics"]}  # A/A
OVERHEAD_GOAL = 0.03  # the largest acceptable median cost


def recording_cost(args: argparse.Namespace, root: Path, calls: int = 20_000, repeats: int = 5) -> dict[str, Any]:
    """The access log's direct cost, in process: µs per request the event loop spends in ``Metrics.request``
    with metrics only and with the access log too (the line kept for the writer), and µs per line the writer
    thread spends (format, one write to /dev/null); medians of ``repeats`` interleaved runs of ``calls``."""
    from fakegradient.serving.metrics import ACCESS_FORMAT, ACCESS_LOGGER, BufferedStderr, Metrics

    logger = logging.getLogger(ACCESS_LOGGER)
    with open(os.devnull, "w") as null:
        handler = BufferedStderr(null, interval=3600, capacity=calls)  # written below, by flush()
        handler.setFormatter(logging.Formatter(ACCESS_FORMAT))
        logger.addHandler(handler)  # the operator's handler: the access log adds none of its own
        try:
            meters = {"metrics": Metrics(), "metrics+log": Metrics(access_log=True)}
            times: dict[str, list[float]] = {"metrics": [], "metrics+log": [], "writer": []}
            request = ("grpc", "ModelInfer", "OK", 0.01, "ipv4:127.0.0.1:54321", "ModelInfer protected")
            for _ in range(repeats):
                for name, meter in meters.items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        meter.request(*request)
                    times[name].append((time.perf_counter() - start) / calls * 1e6)
                start = time.perf_counter()
                handler.flush()
                times["writer"].append((time.perf_counter() - start) / calls * 1e6)
        finally:
            logger.removeHandler(handler)
            handler.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"in process, median of {repeats} x {calls} calls: metrics {median['metrics']:.1f} us per request; the "
          f"access log {median['metrics+log'] - median['metrics']:.1f} us more on the event loop and "
          f"{median['writer']:.1f} us per line in its writer thread")
    return {"mode": "recording-cost", "metrics_us": median["metrics"],
            "log_us": median["metrics+log"] - median["metrics"], "writer_us": median["writer"], "calls": calls,
            "repeats": repeats}


def overhead(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The three :data:`OVERHEAD_SERVERS` (``--control``: :data:`OVERHEAD_CONTROL`, where two identical servers
    show what differences noise alone makes) at once, the same phase against each in every round (order rotated)."""
    servers_used = OVERHEAD_CONTROL if args.control else OVERHEAD_SERVERS
    common = ["--no-dynamic-batching", "--max-runs", str(args.max_runs), "--device", args.device, "--http",
              args.http, *headroom(args), *(["--cpu-arena"] if args.cpu_arena else []), *args.server_options]
    log_path = root / "access.log"
    servers: dict[str, tuple[subprocess.Popen, dict[str, tuple[str, int]]]] = {}
    rates: dict[tuple[str, str], list[float]] = {(t, s): [] for t in args.transports for s in servers_used}
    cpu: dict[tuple[str, str], list[float]] = {(t, s): [] for t in args.transports for s in servers_used}
    images = args.clients * args.requests * args.batch
    with open(log_path, "wb") as log:
        try:
            for setting, options in servers_used.items():
                grpc_port = free_port()
                process, url = start_server(root, ["protected"], args.threads, *common, *options,
                                            "--grpc-port", str(grpc_port),
                                            stderr=log if setting == "metrics+log" else None)
                servers[setting] = process, {"rest": ("127.0.0.1", int(url.rsplit(":", 1)[1])),
                                             "grpc": ("127.0.0.1", grpc_port)}
            for setting, (_, addresses) in servers.items():
                for transport in args.transports:
                    PHASES[transport](addresses[transport], "protected", args.clients, 2, args.batch)  # warm-up
            order = list(servers_used)
            for round_ in range(args.rounds):
                turn = order[round_ % len(order):] + order[:round_ % len(order)]
                for transport in args.transports:
                    for setting in turn:
                        pid = servers[setting][0].pid
                        before = cpu_seconds(pid)
                        rate, _ = PHASES[transport](servers[setting][1][transport], "protected", args.clients,
                                                    args.requests, args.batch)
                        rates[transport, setting].append(rate)
                        cpu[transport, setting].append((cpu_seconds(pid) - before) / images)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait()
    lines = log_path.read_bytes().count(b"\n")
    answered = args.rounds * len(args.transports) * args.clients * args.requests
    if lines < answered:  # the log server did not log: its cost was not measured
        raise SystemExit(f"the access-log server wrote {lines} lines for at least {answered} answered requests: "
                         "its access log is not working, the overhead would be meaningless")
    print(f"overhead: protected model, no batching, {args.clients} concurrent clients x {args.requests} requests x "
          f"batch {args.batch} (binary tensors), {args.rounds} rounds, the servers' order rotated per round; server "
          f"--http {args.http} --device {args.device} --threads {args.threads} --max-runs {args.max_runs} "
          f"{' '.join(headroom(args))}"
          f"{' --cpu-arena' if args.cpu_arena else ''}; access log: {lines} lines, {log_path.stat().st_size} bytes")
    print(f"{'transport':<9} {'server':<12} {'images/s':>9} {'/ off per round [min-max]':>27} {'n':>3} "
          f"{'median cost':>11}  cost <= {OVERHEAD_GOAL:.0%}  {'server CPU/image / off':>22}")
    for transport in args.transports:
        base, base_cpu = rates[transport, "off"], cpu[transport, "off"]
        for setting in servers_used:
            own = rates[transport, setting]
            row = f"{transport:<9} {setting:<12} {statistics.median(own):>9.1f}"
            if setting != "off":
                ratios = [a / b for a, b in zip(own, base)]
                cpu_ratios = [a / b for a, b in zip(cpu[transport, setting], base_cpu)]
                cost = 1 - statistics.median(ratios)
                row += (f" {spread(ratios):>27} {len(ratios):>3} {cost:>11.1%}  "
                        f"{'yes' if cost <= OVERHEAD_GOAL else 'NO':>9}  {spread(cpu_ratios):>22}")
            print(row)
    return {"mode": "overhead", "servers": servers_used, "access_log_lines": lines,
            "images_per_s": [{"transport": t, "server": s, "rounds": rates[t, s]} for t, s in rates],
            "server_cpu_seconds_per_image": [{"transport": t, "server": s, "rounds": cpu[t, s]} for t, s in cpu]}


# --- hostile clients --------------------------------------------------------------------------------------


def probe(url: str, seconds: float, failures: Counter, interval: float = 0.02) -> list[float]:
    """Latencies (s) of GET /v2/health/live on a fresh connection every ``interval`` for ``seconds``;
    a failed probe counts as 30 s and is tallied in ``failures``."""
    latencies, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url + "/v2/health/live", timeout=30) as answer:
                answer.read()
            latencies.append(time.perf_counter() - start)
        except OSError as exc:
            failures[f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"] += 1
            latencies.append(30.0)
        time.sleep(max(0.0, interval - (time.perf_counter() - start)))
    return latencies


def legit(address: tuple[str, int], seconds: float, results: list[tuple[int, float]]) -> None:
    """A well-behaved client: one 1-image binary request every 100 ms for ``seconds``; (status, latency)."""
    body, headers = binary_body(1)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        results.append((post(address, body, headers, timeout=30), time.perf_counter() - start))
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB (Linux); {} elsewhere."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM") if k in fields}


def post(address: tuple[str, int], body: bytes, headers: dict[str, str], timeout: float = 120) -> int:
    """Status of one POST to the protected model (0 when the connection failed)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", "/v2/models/protected/infer", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def json_body(images: int) -> bytes:
    x = np.random.default_rng(images).random((images, 3, 224, 224), dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()


def binary_body(images: int) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(images).random((images, 3, 224, 224), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def repeat_post(address, body: bytes, headers: dict[str, str], label: str, stop, tally: Counter) -> None:
    """The same request, one after the other, until ``stop``."""
    while not stop.is_set():
        tally[f"{label}: {post(address, body, headers)}"] += 1


def slow_body(address, stop, tally: Counter) -> None:
    """All but the last 16 bytes of a ~63 MiB body, then nothing: until the server gives up on it."""
    size, chunk = 63 * 2**20, b"0" * 2**20
    while not stop.is_set():
        try:
            with socket.create_connection(address) as sock:
                sock.sendall(f"POST /v2/models/protected/infer HTTP/1.1\r\nHost: x\r\n"
                             f"Content-Length: {size}\r\n\r\n".encode())
                for _ in range(size // len(chunk) - 1):
                    sock.sendall(chunk)
                sock.sendall(chunk[:-16])
                status = first_line(sock, stop)
                tally[f"slow body: {status}"] += 1
        except OSError as exc:
            tally[f"slow body: {type(exc).__name__}"] += 1


def first_line(sock: socket.socket, stop: threading.Event) -> str:
    """The status line the server answers on ``sock`` ("closed" when it closes, "stopped" when ``stop`` is set
    first), polled each second."""
    sock.settimeout(1)
    answer = b""
    while not stop.is_set() and not answer:
        try:
            answer = sock.recv(64) or b"closed"
        except TimeoutError:
            continue
    return answer.split(b"\r\n")[0].decode(errors="replace") or "stopped"


def lockout(address, stop, tally: Counter, declared: int = 64 * 2**20) -> None:
    """A head declaring a ``declared``-byte body and one byte of it, then nothing, on one connection, again
    whenever the server closes it (1.2 KB sent per 30 s locked every client out while bodies were charged
    with their declared length)."""
    while not stop.is_set():
        try:
            with socket.create_connection(address) as sock:
                sock.sendall(f"POST /v2/models/protected/infer HTTP/1.1\r\nHost: x\r\n"
                             f"Content-Length: {declared}\r\n\r\n{{".encode())
                status = first_line(sock, stop)
                tally[f"lock-out head: {status}"] += 1
        except OSError as exc:
            tally[f"lock-out head: {type(exc).__name__}"] += 1


def idle_flood(address, count: int, stop, tally: Counter) -> None:
    """Keep ``count`` connections open that never send a byte (reopening those the server closes)."""
    open_: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for sock in open_:
            try:
                if sock.recv(1) == b"":
                    raise ConnectionResetError
                alive.append(sock)
            except BlockingIOError:
                alive.append(sock)
            except OSError:
                sock.close()
                tally["idle connections closed by the server"] += 1
        open_ = alive
        while len(open_) < count and not stop.is_set():
            try:
                sock = socket.create_connection(address, timeout=5)
                sock.setblocking(False)
                open_.append(sock)
                tally["idle connections opened"] += 1
            except OSError:
                tally["idle connection refused"] += 1
                break
        stop.wait(0.5)
    for sock in open_:
        sock.close()


def attack(address: tuple[str, int], counts: dict[str, int], ready, stop, results) -> None:
    """The hostile clients, as threads of a process of their own (so the probe does not share their GIL);
    sets ``ready`` once they run, puts their tally into ``results`` after ``stop``."""
    tally: Counter = Counter()
    big, (batch, batch_headers) = json_body(21), binary_body(64)
    threads = ([threading.Thread(target=repeat_post, args=(address, big, {}, f"big JSON ({len(big) / 2**20:.0f} MiB)",
                                                          stop, tally)) for _ in range(counts["big_json"])]
               + [threading.Thread(target=repeat_post, args=(address, batch, batch_headers, "64-image batch", stop,
                                                             tally)) for _ in range(counts["big_batches"])]
               + [threading.Thread(target=slow_body, args=(address, stop, tally)) for _ in range(counts["slow_bodies"])]
               + [threading.Thread(target=lockout, args=(address, stop, tally)) for _ in range(counts["lockout"])]
               + [threading.Thread(target=idle_flood, args=(address, counts["idle"], stop, tally))])
    for thread in threads:
        thread.start()
    ready.set()
    for thread in threads:
        thread.join()
    results.put(dict(tally))


def hostile(args: argparse.Namespace, root: Path) -> None:
    import multiprocessing

    server, url = start_server(root, ["protected"], args.threads, "--http", args.http, *args.server_options)
    address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    counts = {"big_json": args.big_json, "big_batches": args.big_batches, "slow_bodies": args.slow_bodies,
              "idle": args.idle, "lockout": args.lockout}
    try:
        post(address, *binary_body(1))  # warm-up
        failures: Counter = Counter()
        served: dict[str, list[tuple[int, float]]] = {"without attack": [], "under attack": []}
        client = threading.Thread(target=legit, args=(address, args.seconds, served["without attack"]))
        client.start()
        quiet = probe(url, args.seconds, failures)
        client.join()
        before = memory_mib(server.pid)
        attacker = context.Process(target=attack, args=(address, counts, ready, stop, results))
        attacker.start()
        ready.wait(timeout=300)
        time.sleep(2)  # let the attack build up
        client = threading.Thread(target=legit, args=(address, args.seconds, served["under attack"]))
        client.start()
        attacked = probe(url, args.seconds, failures)
        client.join()
        peak = memory_mib(server.pid)
        stop.set()
        tally = results.get(timeout=300)
        attacker.join(timeout=60)
        time.sleep(5)
        after = memory_mib(server.pid)
    finally:
        server.terminate()
        server.wait()
    print(f"health probe: GET /v2/health/live on a fresh connection every 20 ms for {args.seconds:g} s each way")
    print(f"{'':<16} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, latencies in (("without attack", quiet), ("under attack", attacked)):
        p50, p99, top = np.percentile(latencies, [50, 99, 100]) * 1e3
        print(f"{name:<16} {len(latencies):>5} {p50:>8.1f} {p99:>8.1f} {top:>8.1f}")
    print("a well-behaved client (one 1-image request every 100 ms) meanwhile:")
    for name, results in served.items():
        statuses = Counter(status for status, _ in results)
        p50, p99 = np.percentile([t for _, t in results], [50, 99]) * 1e3
        print(f"  {name:<16} n {len(results):>4}  answers {dict(sorted(statuses.items()))}  "
              f"success {statuses[200] / len(results):.1%}  p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    for failure, count in failures.items():
        print(f"  failed probes: {failure}: {count}")
    print(f"attack: {args.big_json} big-JSON clients, {args.slow_bodies} slow bodies, {args.idle} idle connections, "
          f"{args.big_batches} 64-image clients, {args.lockout} lock-out heads; their answers:")
    for outcome, count in sorted(tally.items()):
        print(f"  {outcome}: {count}")
    statuses = Counter()  # every answer of the run: probes, the well-behaved client, the attackers
    statuses[200] += sum(1 for t in quiet + attacked if t < 30.0)
    statuses.update(status for results in served.values() for status, _ in results)
    for outcome, count in tally.items():
        code = re.search(r"\b([1-5]\d\d)\b", outcome.rsplit(": ", 1)[-1])
        if code:
            statuses[int(code.group(1))] += count
    errors = {code: n for code, n in statuses.items() if code >= 500}
    print(f"answers in all: {sum(statuses.values())}, 5xx: {sum(errors.values())} {errors} (503: load shed, "
          "with Retry-After)")
    if before:
        print(f"server memory (MiB): RSS before the attack {before['VmRSS']:.0f}, peak {peak['VmHWM']:.0f}, "
              f"RSS 5 s after it {after['VmRSS']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client and phase")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, in-process and in the server")
    parser.add_argument("--batch-sizes", type=lambda t: [int(b) for b in t.split(",")], default=[1, 4, 8, 16, 32],
                        help="in-process batch sizes tried for the limit (default 1,4,8,16,32)")
    parser.add_argument("--seconds-per-size", type=float, default=2.0, help="in-process time per measurement")
    parser.add_argument("--max-runs", type=int, default=2, help="ONNX Runtime runs at once, in-process and served")
    parser.add_argument("--cpu-arena", action="store_true", help="ONNX Runtime's CPU arena, in-process and served")
    parser.add_argument("--device", default="cpu", choices=list(defaults.ORT_PROVIDERS),
                        help="ONNX Runtime execution provider, in-process and served (cuda: onnxruntime-gpu)")
    parser.add_argument("--http", default=defaults.HTTP, choices=list(defaults.HTTP_PARSERS),
                        help="the server's HTTP/1.1 implementation (serve --http)")
    parser.add_argument("--batch-rows", type=int, default=16, help="server --batch-rows with dynamic batching")
    parser.add_argument("--batch-delay-ms", type=float, default=1.0, help="server --batch-delay-ms")
    parser.add_argument("--server-option", dest="server_options", action="append", default=[],
                        help="extra `serve` option (repeat; e.g. --server-option=--max-runs=1)")
    parser.add_argument("--transports", type=lambda t: t.split(","), default=["rest", "grpc"],
                        help="served over: rest, grpc (comma-separated; phases interleaved)")
    parser.add_argument("--settings", type=lambda t: t.split(","), default=["dynamic batching", "no batching"],
                        help="server settings measured: 'dynamic batching', 'no batching' (comma-separated)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--hostile", action="store_true", help="health latency under hostile clients instead")
    mode.add_argument("--overhead", action="store_true",
                      help="the cost of metrics and of the access log instead (three servers, interleaved)")
    mode.add_argument("--recording-cost", action="store_true",
                      help="the access log's and the metrics' own work per request, in process, instead")
    parser.add_argument("--seconds", type=float, default=30, help="--hostile: probing time, each way")
    parser.add_argument("--big-json", type=int, default=4, help="--hostile: clients sending ~62 MiB JSON")
    parser.add_argument("--slow-bodies", type=int, default=16, help="--hostile: stalled ~63 MiB bodies")
    parser.add_argument("--idle", type=int, default=500, help="--hostile: idle connections")
    parser.add_argument("--big-batches", type=int, default=32, help="--hostile: clients sending 64 images")
    parser.add_argument("--lockout", type=int, default=4,
                        help="--hostile: connections declaring a 64 MiB body, sending 1 byte, then idling")
    parser.add_argument("--control", action="store_true",
                        help="--overhead: an A/A control (off, metrics+log, off again) instead of off, metrics, log")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here (throughput, overhead)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.recording_cost:  # the only mode without a model
            export_models(root)
        run = (hostile if args.hostile else overhead if args.overhead else recording_cost if args.recording_cost
               else throughput)
        result = run(args, root)
    if args.out and result:
        write_result(args.out, result)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """``result`` with the command, the machine and the time, as JSON (atomically): what docs render."""
    payload = {"command": "python benchmarks/serving.py " + shlex.join(sys.argv[1:]),
               "machine": {"cpu": cpu_model(), "cores": usable_cores(), "load_average_after": os.getloadavg()},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} | result
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
