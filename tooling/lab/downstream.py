"""One downstream service of the lab (inventory, billing, shipping or notifications): a real
HTTP server process on 127.0.0.1 with a service time, a capacity and fault knobs.

    python -m tooling.lab.downstream --service billing --port 8101 --base-ms 25 --capacity 4

POST /work {"run": ..., "order_id": ...} takes `base-ms` (times the slow factor, +-20 %) while
holding one of `capacity` slots, then answers 200 and records its effect, or 503 with no effect
for the failing share. PUT /fault {"slow": 10, "fail_rate": 0.2} changes the knobs; "down" is
this process stopped and started again by the lab. GET /health answers 200 when it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from tooling.lab import effects


class Service:
    def __init__(self, *, name: str, base_ms: float, capacity: int, client: redis.Redis) -> None:
        self.name = name
        self.base_ms = base_ms
        # A real service has finite workers: past `capacity` requests wait their turn, and the
        # wait counts in the caller's latency (and towards its time-out).
        self.slots = threading.BoundedSemaphore(capacity)
        self.client = client
        self.slow = 1.0
        self.fail_rate = 0.0

    def set_fault(self, *, slow: float, fail_rate: float) -> None:
        if slow < 1 or not 0 <= fail_rate <= 1:
            raise ValueError(f"slow must be >= 1 and fail_rate between 0 and 1, got {slow}, {fail_rate}")
        self.slow, self.fail_rate = slow, fail_rate

    def work(self, run: str, order_id: str) -> bool:
        with self.slots:
            time.sleep(self.base_ms * self.slow * random.uniform(0.8, 1.2) / 1000)
            if random.random() < self.fail_rate:
                return False
            effects.record(self.client, run=run, order_id=order_id, service=self.name, at=time.time())
            return True


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # thousands of requests a minute; the lab counts them instead

        def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            data = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            return data

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, {"service": service.name})
            else:
                self._answer(404, {"error": "no such path"})

        def do_POST(self) -> None:
            if self.path != "/work":
                self._answer(404, {"error": "no such path"})
                return
            try:
                body = self._body()
                run, order_id = str(body["run"]), str(body["order_id"])
            except (ValueError, KeyError) as exc:
                self._answer(400, {"error": f"bad request: {exc}"})
                return
            if service.work(run, order_id):
                self._answer(200, {"service": service.name, "order_id": order_id})
            else:
                self._answer(503, {"error": f"{service.name}: injected failure"})

        def do_PUT(self) -> None:
            if self.path != "/fault":
                self._answer(404, {"error": "no such path"})
                return
            try:
                body = self._body()
                service.set_fault(slow=float(body.get("slow", 1)), fail_rate=float(body.get("fail_rate", 0)))
            except (ValueError, TypeError) as exc:
                self._answer(400, {"error": str(exc)})
                return
            self._answer(200, {"slow": service.slow, "fail_rate": service.fail_rate})

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # "back after the outage" binds the same port at once
    request_queue_size = 256


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, choices=effects.SERVICES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-ms", type=float, default=25.0)
    parser.add_argument("--capacity", type=int, default=4)
    args = parser.parse_args(argv)
    if args.capacity < 1 or args.base_ms < 0:
        parser.error("--capacity must be at least 1 and --base-ms not negative")
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=10)
    service = Service(name=args.service, base_ms=args.base_ms, capacity=args.capacity, client=client)
    server = Server(("127.0.0.1", args.port), make_handler(service))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"{args.service} listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":
    main()
