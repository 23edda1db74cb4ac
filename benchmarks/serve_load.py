"""Load on `steer serve`: N concurrent clients against the same requests one at a time.

    python benchmarks/serve_load.py [--clients 1 8 32] [--max-tokens 16] [--repeats 2] [--max-seconds 900]

Starts `steer serve` (the bundled default model unless --model) as a subprocess on a
loopback port, then for each N and each condition sends N chat requests:
- "steered": every client has its own steering (library vectors x multipliers, no two alike);
- "unsteered": the same prompts, no steering.
Each condition runs twice, interleaved and repeated (best of --repeats kept): all N at
once (the server batches them), and the same N requests one at a time. Every request
generates exactly --max-tokens tokens (`ignore_eos`), so tokens/s compare like for like.

Reported: throughput (completion tokens/s), p50/p99 latency, concurrent/sequential
throughput, steered/unsteered time; and a leak check: every concurrent reply must be
token-for-token its one-at-a-time reply (so no reply shows another request's
steering), and steered replies must differ from unsteered ones (steering happened).
Loopback only; bounded by --max-seconds (it stops with what it has measured).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

PROMPTS = [
    "Tell me about the sea.", "What is the capital of France?", "Write a short poem about rain.",
    "How do I bake bread?", "Explain gravity to a child.", "Give me three tips for sleeping well.",
    "What is a steering vector?", "Describe your favourite city.",
]
VECTORS = ["sentiment-positive", "sentiment-negative", "formality", "brevity", "refusal", "sycophancy",
           "hallucination", "power-seeking"]
MULTIPLIERS = [4.0, -3.0, 2.0, 6.0]


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) the server process has used: steadier than wall time on a shared machine."""
    try:
        fields = open(f"/proc/{pid}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Steered / unsteered CPU time of the same N=8 batch run by the engine in this process."""
    import torch  # noqa: F401  (the engine's; imported here so the HTTP part does not need it)

    import steer
    from steer import library
    from steer.prompts import instruction_suffix_length
    from steer.serve.engine import RowRequest, RowSteer, Sampling, TorchEngine

    model, tokenizer = steer.load_model(args.model, dtype="float32", device="cpu")
    engine = TorchEngine(model, tokenizer)
    suffix = instruction_suffix_length(tokenizer)
    vectors = [library.load(name) for name in VECTORS]

    def rows(steered: bool) -> list[RowRequest]:
        out = []
        for i in range(8):
            body = request_body(i, steered, args.max_tokens)
            ids = tokenizer.apply_chat_template(body["messages"], tokenize=True, add_generation_prompt=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            steers = (RowSteer(vectors[i], body["steer"][0]["multiplier"], "after_instruction", suffix),) if steered else ()
            out.append(RowRequest(ids, Sampling(args.max_tokens), steers))
        return out

    cpu: dict[str, list[float]] = {"steered": [], "unsteered": []}
    for _ in range(args.engine_repeats):
        for condition in ("steered", "unsteered"):
            started = time.process_time()
            engine.generate(rows(condition == "steered"), lambda *a: None)
            cpu[condition].append(time.process_time() - started)
    return {"steered_cpu_s": [round(c, 2) for c in cpu["steered"]],
            "unsteered_cpu_s": [round(c, 2) for c in cpu["unsteered"]],
            "ratio_of_medians": round(statistics.median(cpu["steered"]) / statistics.median(cpu["unsteered"]), 3),
            "ratio_of_bests": round(min(cpu["steered"]) / min(cpu["unsteered"]), 3)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "steer.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(max(args.clients)), "--dtype", "float32", "--device", "cpu"]
    if args.model:
        command += ["--model", args.model]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"steer serve exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("steer serve did not start within 300 s")


def request_body(index: int, steered: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if steered:
        vector = VECTORS[index % len(VECTORS)]
        multiplier = MULTIPLIERS[(index // len(VECTORS)) % len(MULTIPLIERS)]
        body["steer"] = [{"vector": f"library:{vector}", "multiplier": multiplier, "positions": "after_instruction"}]
    return body


def send(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[str, int, float]:
    started = time.perf_counter()
    response = client.post(url, json=body, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"request failed ({response.status_code}): {response.text}")
    data = response.json()
    return data["choices"][0]["message"]["content"], int(data["usage"]["completion_tokens"]), elapsed


def run_concurrent(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    results: list[tuple[str, int, float] | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies) + 1)

    def worker(i: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            results[i] = send(client, url, bodies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = [r for r in results if r is not None]
    return summarise(done, wall)


def run_sequential(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    with httpx.Client() as client:
        started = time.perf_counter()
        done = [send(client, url, body) for body in bodies]
        wall = time.perf_counter() - started
    return summarise(done, wall)


def summarise(done: list[tuple[str, int, float]], wall: float) -> dict[str, Any]:
    latencies = sorted(r[2] for r in done)
    tokens = sum(r[1] for r in done)

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))]

    return {"texts": [r[0] for r in done], "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_s": quantile(0.5), "p99_s": quantile(0.99)}


def best(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    return b if a is None or b["wall_s"] < a["wall_s"] else a


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=900, help="stop after this long, reporting what ran")
    parser.add_argument("--model", default=None)
    parser.add_argument("--overhead-clients", type=int, default=8,
                        help="steered vs unsteered: this many concurrent clients ...")
    parser.add_argument("--overhead-repeats", type=int, default=5,
                        help="... run interleaved this many times each (best kept); 0 skips it")
    parser.add_argument("--engine-repeats", type=int, default=3,
                        help="steering cost without HTTP: the engine in this process, N=8 batches steered vs "
                             "unsteered, interleaved, CPU time; 0 skips it")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if any(n < 1 or n > 64 for n in args.clients) or not 1 <= args.max_tokens <= 256:
        parser.error("--clients must be 1..64 and --max-tokens 1..256 (this benchmark is bounded)")
    port = free_port()
    server = start_server(args, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    began = time.monotonic()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        send(httpx.Client(), url, request_body(0, True, 2))  # warm-up: library vectors load once
        for n in args.clients:
            results: dict[tuple[str, str], dict[str, Any] | None] = {}
            for _ in range(args.repeats):
                for condition in ("steered", "unsteered"):
                    bodies = [request_body(i, condition == "steered", args.max_tokens) for i in range(n)]
                    for mode, run in (("concurrent", run_concurrent), ("sequential", run_sequential)):
                        results[(condition, mode)] = best(results.get((condition, mode)), run(url, bodies))
                if time.monotonic() - began > args.max_seconds:
                    problems.append(f"stopped early at N={n}: --max-seconds {args.max_seconds} reached")
                    break
            for condition in ("steered", "unsteered"):
                concurrent, sequential = results[(condition, "concurrent")], results[(condition, "sequential")]
                assert concurrent is not None and sequential is not None
                leaks = sum(a != b for a, b in zip(concurrent["texts"], sequential["texts"]))
                if leaks:
                    problems.append(f"N={n} {condition}: {leaks} of {n} concurrent replies differ from one-at-a-time")
                rows.append({"clients": n, "condition": condition,
                             "concurrent_tok_s": round(concurrent["tokens_per_s"], 1),
                             "sequential_tok_s": round(sequential["tokens_per_s"], 1),
                             "speedup": round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2),
                             "p50_s": round(concurrent["p50_s"], 3), "p99_s": round(concurrent["p99_s"], 3),
                             "sequential_p50_s": round(sequential["p50_s"], 3),
                             "sequential_p99_s": round(sequential["p99_s"], 3),
                             "replies_differ_from_alone": leaks,
                             "wall_s": round(concurrent["wall_s"], 3)})
            steered = results[("steered", "concurrent")]
            plain = results[("unsteered", "concurrent")]
            assert steered is not None and plain is not None
            same = sum(a == b for a, b in zip(steered["texts"], plain["texts"]))
            rows[-2]["steered_over_unsteered_time"] = round(steered["wall_s"] / plain["wall_s"], 3)
            rows[-2]["steered_equal_to_unsteered"] = same
            if time.monotonic() - began > args.max_seconds:
                break
        overhead = None
        if args.overhead_repeats > 0 and time.monotonic() - began < args.max_seconds:
            n = args.overhead_clients
            walls: dict[str, list[float]] = {"steered": [], "unsteered": []}
            cpus: dict[str, list[float]] = {"steered": [], "unsteered": []}
            for _ in range(args.overhead_repeats):
                for condition in ("steered", "unsteered"):
                    bodies = [request_body(i, condition == "steered", args.max_tokens) for i in range(n)]
                    cpu_before = server_cpu_s(server.pid)
                    walls[condition].append(run_concurrent(url, bodies)["wall_s"])
                    cpu_after = server_cpu_s(server.pid)
                    if cpu_before is not None and cpu_after is not None:
                        cpus[condition].append(cpu_after - cpu_before)
            overhead = {"clients": n, "repeats": args.overhead_repeats,
                        "steered_best_s": round(min(walls["steered"]), 3),
                        "unsteered_best_s": round(min(walls["unsteered"]), 3),
                        "ratio_of_bests": round(min(walls["steered"]) / min(walls["unsteered"]), 3),
                        "ratio_of_medians": round(statistics.median(walls["steered"])
                                                  / statistics.median(walls["unsteered"]), 3)}
            if cpus["steered"] and cpus["unsteered"]:
                overhead["server_cpu_s_steered"] = [round(c, 2) for c in cpus["steered"]]
                overhead["server_cpu_s_unsteered"] = [round(c, 2) for c in cpus["unsteered"]]
                overhead["cpu_ratio_of_medians"] = round(statistics.median(cpus["steered"])
                                                         / statistics.median(cpus["unsteered"]), 3)
    finally:
        server.terminate()
        server.wait(timeout=30)
    header = ["clients", "condition", "concurrent_tok_s", "sequential_tok_s", "speedup", "p50_s", "p99_s",
              "sequential_p50_s", "sequential_p99_s", "replies_differ_from_alone", "steered_over_unsteered_time",
              "steered_equal_to_unsteered"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in header))
    engine_cost = engine_overhead(args) if args.engine_repeats > 0 else None
    if engine_cost:
        print(f"\nengine only (no HTTP), 8 rows x {args.max_tokens} tokens, {args.engine_repeats} interleaved runs: "
              f"steered / unsteered CPU time {engine_cost['ratio_of_medians']} (medians), "
              f"{engine_cost['ratio_of_bests']} (bests); {engine_cost}")
    if overhead:
        print(f"\nsteered / unsteered, {overhead['clients']} concurrent clients, {overhead['repeats']} interleaved "
              f"runs each: best {overhead['steered_best_s']} s / {overhead['unsteered_best_s']} s = "
              f"{overhead['ratio_of_bests']} (ratio of medians {overhead['ratio_of_medians']}); server CPU time, "
              f"ratio of medians: {overhead.get('cpu_ratio_of_medians', 'n/a')}")
    load = os.getloadavg()
    print(f"\nmax_tokens={args.max_tokens} per request (ignore_eos), best of {args.repeats}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {load[0]:.1f} "
          f"over {os.cpu_count()} CPUs at the end")
    for problem in problems:
        print("PROBLEM:", problem)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "overhead": overhead, "engine_overhead": engine_cost, "problems": problems, "max_tokens": args.max_tokens,
                       "load_average": load}, handle, indent=2)
    return 1 if any("differ" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
