"""A database and a Redis of a run's own for `manage.py bench` and `manage.py lab` (and on
RabbitMQ a vhost of its own), and the run itself in a child process on them: the bench and the
lab never read or write a user's dead letters, spans, sagas, queues or `flows:*` keys.

Why a child process: everything that talks to Redis or the database in a process (the Celery
app's broker pool, tracing's client, the channel layer, Django's connection) takes its address
from the settings once. A `manage.py bench` started with DATABASE_URL, REDIS_URL and
CELERY_BROKER_URL naming the run's own stores cannot reach the user's, whatever a measurement
does, and every process it starts (workers, daphne, the collector) inherits them.

Order of steps (run_on_own_stores):
1. A new database on the configured server (tooling.database.database_of_its_own), and a Redis
   logical database of the configured server found empty and claimed with a key; if none is
   free (a Redis with one database), a private redis-server in the run's temporary directory.
   The run stays on the configured kinds of broker and database, so its figures are theirs.
   On RabbitMQ (tooling.brokers.chosen_url) a vhost of the run's own on that broker, which
   carries the run's queues; Redis still holds its counts, spans and engine keys.
2. The same command in a child process, with INSIDE_ENV set: it migrates its database and runs.
3. Ctrl-C or SIGTERM here: the child is sent SIGINT once (it stops the processes it started)
   and waited for; a second Ctrl-C does not cut the clean-up short.
4. However the run ended: the Redis database flushed (only while our claim is in it), the
   vhost deleted, the database dropped, the temporary directory removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from django.conf import settings

from flows.core.brokers import RABBITMQ, kind_of
from tooling.brokers import chosen_url
from tooling.database import database_of_its_own
from tooling.devredis import RedisServer
from tooling.rabbitmq import Vhost
from tracing.redis import key

INSIDE_ENV = "FLOWSCOPE_OWN_STORES"  # set for the run itself: the pid of the command that made its stores
CLAIM = key("own-stores", "claim")  # in a Redis database we took: whose it is
STOP_TIMEOUT_S = 120.0  # the child stops its workers, daphne and the collector in this time


def inside() -> bool:
    """True in the run itself, which is on stores of its own already."""
    return bool(os.environ.get(INSIDE_ENV))


def with_database_number(url: str, number: int) -> str:
    """The Redis URL with another logical database: the path for tcp, `?db=` for a unix socket."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
    if parts.scheme == "unix":
        return f"unix://{parts.netloc}{parts.path}?{urlencode([*query, ('db', str(number))])}"  # urlunsplit would drop the "//"
    return urlunsplit(parts._replace(path=f"/{number}", query=urlencode(query)))


def shown(url: str) -> str:
    """A URL fit to print: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def claim_empty_database(url: str, token: str) -> tuple[str, redis.Redis] | None:
    """A logical database of the Redis at `url` that holds no key, with our claim written in
    it; None if every one is in use or the server has one database only (Redis Cluster).

    The claim is a SET NX: of two runs that both see a database empty, one gets it. A key
    someone else wrote between our check and our claim makes us let it go."""
    configured = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    current = configured.connection_pool.connection_kwargs.get("db", 0)
    try:
        count = int(configured.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG is often refused on a managed Redis
        count = 16
    finally:
        configured.close()
    # From the top down: the low numbers are the ones other programs pick.
    for number in range(count - 1, -1, -1):
        if number == int(current):
            continue
        candidate = with_database_number(url, number)
        client = redis.Redis.from_url(candidate, socket_timeout=10, socket_connect_timeout=5)
        try:
            if client.dbsize() == 0 and client.set(CLAIM, token, nx=True):
                if client.dbsize() == 1:
                    return candidate, client
                client.delete(CLAIM)
        except redis.ResponseError:  # "DB index is out of range", or SELECT refused
            client.close()
            return None
        client.close()
    return None


@contextmanager
def redis_of_its_own(url: str, *, directory: Path) -> Iterator[str]:
    """The URL of an empty Redis database for one run, emptied again when the block ends."""
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    claimed = claim_empty_database(url, token)
    if claimed is None:
        server = RedisServer(directory=directory / "redis").start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    own_url, client = claimed
    try:
        yield own_url
    finally:
        # Only a database that is still ours: one whose claim is gone was taken over by someone.
        if client.get(CLAIM) == token.encode():
            client.flushdb()
        client.close()


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def run_on_own_stores(command: str, args: list[str], *, kind: str, out: Callable[[str], None], note: Callable[[str], None] = _say, env: dict[str, str] | None = None) -> None:
    """`manage.py <command> <args>` in a child process on a database and a Redis of its own, with
    `env` over this process's environment; its stdout lines go to `out`, a word on where it runs
    to `note`. Raises KeyboardInterrupt when interrupted (the child stopped, the stores removed),
    RuntimeError when the run failed."""
    previous_int, previous_term = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix=f"flowscope-{kind}-") as tmp:
            directory = Path(tmp)
            with ExitStack() as stores:
                database_url = stores.enter_context(database_of_its_own(kind, directory=directory))
                redis_url = stores.enter_context(redis_of_its_own(settings.REDIS_URL, directory=directory))
                where = f"a database of its own ({shown(database_url)}) and Redis {shown(redis_url)}"
                broker_url = chosen_url()
                if kind_of(broker_url) == RABBITMQ:
                    vhost = stores.enter_context(Vhost(broker_url, prefix=f"flowscope_{kind}"))
                    where += f", its broker RabbitMQ vhost {vhost.name} at {shown(broker_url)}"
                    broker_url = vhost.url
                else:
                    broker_url, where = redis_url, where + ", its broker that Redis database"
                note(f"the {kind} runs on {where}; all removed after it")
                env = {**os.environ, **(env or {}), INSIDE_ENV: str(os.getpid()), "DATABASE_URL": database_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": broker_url}
                child = subprocess.Popen(
                    [sys.executable, "manage.py", command, *args],
                    cwd=settings.BASE_DIR,
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # Ctrl-C reaches us only; the child is told once, below
                )
                try:
                    assert child.stdout is not None
                    for line in child.stdout:
                        out(line.rstrip("\n"))
                    child.wait()
                except KeyboardInterrupt:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    _stop(child)
                    raise
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    if child.returncode != 0:
        raise RuntimeError(f"the {kind} run exited with {child.returncode}")


def _stop(child: subprocess.Popen[str]) -> None:
    try:
        child.send_signal(signal.SIGINT)
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
