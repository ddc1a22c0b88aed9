"""A real websocket client on the console's /ws/live/, signed in with a session cookie like a
browser: it notes when each frame arrived and how many hops one flow-graph edge showed in it."""

from __future__ import annotations

import threading
import time
from importlib import import_module
from typing import Any

import orjson
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

BENCH_USER = "flowscope-bench"


def session_cookie() -> str:
    """A signed-in session for a viewer of the benchmark's own, as the login page would make it."""
    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    user.set_unusable_password()
    user.save()
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def forget_bench_user() -> None:
    get_user_model().objects.filter(username=BENCH_USER).delete()


def edge_count(frame: dict[str, Any], source: str, target: str) -> int:
    for edge in frame.get("graph", {}).get("edges", []):
        if edge["source"] == source and edge["target"] == target:
            return int(edge["count"])
    return 0


class LiveSocket:
    """Reading on a thread of its own; `frames` holds (arrival time, edge count)."""

    def __init__(self, port: int, *, edge: tuple[str, str]) -> None:
        self.port, self.edge = port, edge
        self.frames: list[tuple[float, int]] = []
        self.closed: str | None = None
        self._socket: ClientConnection | None = None
        self._thread = threading.Thread(target=self._read, name="bench-websocket", daemon=True)

    def connect(self, cookie: str, *, timeout: float = 30) -> None:
        """Until the first frame arrives; RuntimeError if the server refuses or stays silent."""
        try:
            # Entered by hand, not in a with-block: the connection outlives this call; close() ends it.
            self._socket = connect(
                f"ws://127.0.0.1:{self.port}/ws/live/", origin=Origin(f"http://127.0.0.1:{self.port}"), additional_headers={"Cookie": cookie}, open_timeout=timeout, max_size=64 * 1024 * 1024
            ).__enter__()
        except (OSError, InvalidHandshake) as exc:
            raise RuntimeError(f"could not open the live websocket: {exc}") from exc
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.closed is not None:
                raise RuntimeError(f"the live websocket was closed: {self.closed}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no frame on the live websocket within {timeout:.0f}s")
            time.sleep(0.05)

    def _read(self) -> None:
        assert self._socket is not None
        try:
            for payload in self._socket:
                arrived = time.time()
                message = orjson.loads(payload)
                if message.get("type") == "snapshot":
                    self.frames.append((arrived, edge_count(message["frame"], *self.edge)))
        except ConnectionClosed as exc:
            self.closed = str(exc)
        else:
            self.closed = "closed by the server"

    def count(self) -> int:
        return self.frames[-1][1] if self.frames else 0

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._thread.is_alive():
            self._thread.join(10)
