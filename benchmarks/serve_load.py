#!/usr/bin/env python
"""``hypernet serve`` under load: N concurrent txt2img clients for a bounded time against one server on 127.0.0.1.

The server runs in its own process (the ``hypernet serve`` command, API only) on a tiny SD1 checkpoint with a
hypernetwork, exactly as ``hypernet serve --nowebui`` would. Every client loops: POST ``/sdapi/v1/txt2img`` (every
other request with ``<hypernet:style:0.7>``), check the answer (HTTP 200, the expected number of raw-base64 PNGs
of the requested size, an ``info`` JSON string), record the latency. New requests stop at ``--duration``; requests
in flight finish (each bounded by ``--timeout``). The server's one-job-at-a-time queue means latency grows with
the number of clients while throughput stays that of the model.

Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --clients 8 --duration 30

On a CPU shared with other work, GNU OpenMP's default busy-waiting can slow torch down by an order of magnitude;
``OMP_WAIT_POLICY=PASSIVE`` in the environment (inherited by the server process) avoids that, and the JSON line
records the policy used.

The LAST line of stdout is one JSON object: ``{"name": "serve_load", "errors": 0, "p50_s": ..., "p99_s": ...,
"throughput_rps": ..., ...}``. The exit status is 1 when any request failed or any image was missing.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import requests  # noqa: E402
from PIL import Image  # noqa: E402

SERVER = """
import sys
from pathlib import Path
from hypernet.cli import main
from hypernet.server.testing import tiny_server_config
config = tiny_server_config(sys.argv[1])
main(["serve", "--port", sys.argv[2], "--ckpt", str(config.ckpt), "--models-dir", str(config.models_dir),
      "--hypernetwork-dir", str(config.hypernetwork_dir), "--data-dir", str(config.data_dir),
      "--log-dir", str(config.log_dir), "--outputs-dir", str(config.outputs_dir), "--nowebui"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_ready(base: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            if requests.get(f"{base}/progress", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {timeout:.0f}s")


def check_answer(response: requests.Response, expected: int, size: int) -> str | None:
    """None if the answer is complete, else what is wrong with it."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = response.json()
    if len(body.get("images", [])) != expected:
        return f"{len(body.get('images', []))} images instead of {expected}"
    for data in body["images"]:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        if image.format != "PNG" or image.size != (size, size):
            return f"an image is {image.format} {image.size}, expected PNG {size}x{size}"
    if not isinstance(json.loads(body["info"]), dict):
        return "info is not a JSON object string"
    return None


def client(index: int, base: str, args: argparse.Namespace, stop_at: float, results: list, lock: threading.Lock) -> None:
    session = requests.Session()
    n = 0
    while time.monotonic() < stop_at:
        tag = " <hypernet:style:0.7>" if (index + n) % 2 else ""
        body = {"prompt": f"client {index} request {n}{tag}", "steps": args.steps, "width": args.size,
                "height": args.size, "seed": index * 100_000 + n, "batch_size": args.batch_size,
                "sampler_name": "Euler a", "negative_prompt": "blurry"}
        started = time.perf_counter()
        try:
            response = session.post(f"{base}/txt2img", json=body, timeout=args.timeout)
            problem = check_answer(response, args.batch_size, args.size)
            images = args.batch_size if problem is None else 0
        except (requests.RequestException, OSError, ValueError) as e:
            problem, images = f"{type(e).__name__}: {e}", 0
        latency = time.perf_counter() - started
        with lock:
            results.append((latency, problem, images, time.monotonic()))
        n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds during which clients send requests")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--root", type=Path, default=None, help="server folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = args.root or Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}/sdapi/v1"
        log = open(Path(tmp) / "server.log", "w+")
        process = subprocess.Popen([sys.executable, "-c", SERVER, str(root), str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            wait_ready(base, process, args.startup_timeout)
            warm = requests.post(f"{base}/txt2img", json={"prompt": "warm up <hypernet:style:0.5>", "steps": args.steps,
                                                          "width": args.size, "height": args.size}, timeout=args.timeout)
            warm.raise_for_status()
            results: list[tuple[float, str | None, int, float]] = []
            lock = threading.Lock()
            started = time.monotonic()
            stop_at = started + args.duration
            threads = [threading.Thread(target=client, args=(i, base, args, stop_at, results, lock), daemon=True)
                       for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(args.duration + args.timeout + 10)
            finished = max((r[3] for r in results), default=time.monotonic())
            idle = requests.get(f"{base}/progress", timeout=10).json()
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.seek(0)
            server_log = log.read()
            log.close()

    latencies = [r[0] for r in results]
    errors = [r[1] for r in results if r[1] is not None]
    images = sum(r[2] for r in results)
    wall = max(finished - started, 1e-9)
    for problem in dict.fromkeys(errors):
        print(f"error: {problem}", file=sys.stderr)
    if errors:
        print(server_log[-4000:], file=sys.stderr)
    summary = {
        "name": "serve_load",
        "clients": args.clients,
        "duration_s": round(wall, 3),
        "requests": len(results),
        "errors": len(errors),
        "images": images,
        "images_expected": len(results) * args.batch_size,
        "all_images_returned": images == len(results) * args.batch_size,
        "p50_s": round(percentile(latencies, 50), 4),
        "p99_s": round(percentile(latencies, 99), 4),
        "mean_s": round(statistics.fmean(latencies), 4) if latencies else None,
        "max_s": round(max(latencies), 4) if latencies else None,
        "throughput_rps": round(len(results) / wall, 4),
        "images_per_s": round(images / wall, 4),
        "server_idle_after": idle["state"]["job_count"] == 0,
        "steps": args.steps,
        "size": args.size,
        "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE changes CPU results a lot on busy machines
    }
    print(json.dumps(summary))
    sys.exit(0 if not errors and summary["all_images_returned"] and results else 1)


if __name__ == "__main__":
    main()
