"""The bench's and the lab's own stores: a Redis database claimed empty and emptied after, a
database made and removed, on RabbitMQ a vhost made and deleted, and the run in a child process
on them, removed after it however it ends (done, failed, interrupted)."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from tests.support.brokers import on_rabbitmq
from tooling.database import database_of_its_own, own_database_name
from tooling.devredis import answers
from tooling.own_stores import CLAIM, INSIDE_ENV, claim_empty_database, redis_of_its_own, run_on_own_stores, shown, with_database_number
from tooling.rabbitmq import vhost_names

DATABASES = 16  # a redis-server's default


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def database_number(url: str) -> int:
    return int(urlsplit(url).path.strip("/") or 0)


@pytest.fixture
def other_databases():
    """The test Redis's databases other than the configured one, emptied again after the test."""
    clients = [client(with_database_number(settings.REDIS_URL, n)) for n in range(1, DATABASES)]
    yield clients
    for c in clients:
        c.flushdb()
        c.close()


@pytest.mark.parametrize(
    ("url", "number", "expected"),
    [
        ("redis://127.0.0.1:6379/0", 15, "redis://127.0.0.1:6379/15"),
        ("redis://:secret@cache:6380", 3, "redis://:secret@cache:6380/3"),
        ("rediss://cache:6380/2?ssl_cert_reqs=none", 7, "rediss://cache:6380/7?ssl_cert_reqs=none"),
        ("unix:///run/redis.sock?db=0", 9, "unix:///run/redis.sock?db=9"),
    ],
)
def test_a_redis_url_is_given_another_database_and_keeps_the_rest(url, number, expected):
    assert with_database_number(url, number) == expected


def test_a_url_is_printed_without_its_password():
    assert shown("redis://:secret@cache:6380/3") == "redis://@cache:6380/3"
    assert shown("postgres://flowscope:pw@db:5432/x") == "postgres://flowscope@db:5432/x"
    assert shown("sqlite:////tmp/x.sqlite3") == "sqlite:////tmp/x.sqlite3"


def test_a_postgres_database_name_of_a_run_fits_the_servers_limit():
    assert own_database_name("flowscope", "bench", 4242) == "flowscope_flowscope_bench_4242"
    long = own_database_name("x" * 80, "bench", 4242)
    assert len(long) == 63 and long.endswith("_flowscope_bench_4242")


def test_a_run_gets_an_empty_redis_database_that_is_emptied_after_it(other_databases):
    with redis_of_its_own(settings.REDIS_URL, directory=Path("/nonexistent")) as url:
        assert urlsplit(url).netloc == urlsplit(settings.REDIS_URL).netloc, "the configured Redis server"
        assert database_number(url) not in (0, database_number(settings.REDIS_URL))
        own = client(url)
        assert own.keys() == [CLAIM.encode()]
        own.set("flows:bench:counter", 1)
        own.rpush("bench.bare", "a message")
        # Another run at the same time gets another database.
        second = claim_empty_database(settings.REDIS_URL, "another-run")
        assert second is not None and second[0] != url
        second[1].flushdb()
    assert own.dbsize() == 0


def test_a_database_holding_any_key_is_not_taken(other_databases):
    top = other_databases[-1]
    top.set("someone-elses", "data")
    claimed = claim_empty_database(settings.REDIS_URL, "a-run")
    assert claimed is not None
    url, own = claimed
    assert database_number(url) == DATABASES - 2
    assert top.get("someone-elses") == b"data"
    own.flushdb()


def test_a_database_whose_claim_was_taken_over_is_left_as_it_is(other_databases):
    with redis_of_its_own(settings.REDIS_URL, directory=Path("/nonexistent")) as url:
        own = client(url)
        own.set(CLAIM, "someone else now")
        own.set("their-key", 1)
    assert own.get("their-key") == b"1"


def test_with_no_free_database_the_run_gets_a_redis_server_of_its_own(other_databases, tmp_path):
    for c in other_databases:
        c.set("taken", 1)
    with redis_of_its_own(settings.REDIS_URL, directory=tmp_path) as url:
        assert urlsplit(url).port != urlsplit(settings.REDIS_URL).port
        assert client(url).dbsize() == 0
    assert not answers(url, timeout=0.5), "the private server is stopped with the run"


@pytest.mark.django_db(transaction=True)  # on PostgreSQL, CREATE DATABASE outside a transaction
def test_a_database_of_a_run_is_new_and_removed_even_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="the run failed"), database_of_its_own("bench", directory=tmp_path) as url:
        if connection.vendor == "sqlite":
            path = Path(url.removeprefix("sqlite:///"))
            assert path.parent == tmp_path.resolve() and not path.exists()
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE flows_deadletter (id INTEGER)")
        else:
            name = urlsplit(url).path.lstrip("/")
            assert name != settings.DATABASES["default"]["NAME"] and postgres_database_exists(name)
            with psycopg.connect(url, autocommit=True) as db:
                assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,), "new and empty"
                db.execute("CREATE TABLE flows_deadletter (id INTEGER)")
        raise RuntimeError("the run failed")
    if connection.vendor == "sqlite":
        assert list(tmp_path.iterdir()) == []
    else:
        assert not postgres_database_exists(name)


def postgres_database_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


CHILD = """
import os, redis, time
from django.db import connection
connection.ensure_connection()
redis.Redis.from_url(os.environ["REDIS_URL"]).set("flows:bench:count", 1)
for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "{inside}"):
    print(name, os.environ[name], flush=True)
print("pid", os.getpid(), flush=True)
{then}
"""


def child_code(then: str) -> list[str]:
    return ["-c", CHILD.format(inside=INSIDE_ENV, then=then)]


def seen(lines: list[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in lines if " " in line)


def assert_removed(told: dict[str, str]) -> None:
    assert told["REDIS_URL"] != settings.REDIS_URL
    if on_rabbitmq():
        # The broker the settings name, in a vhost of the run's own, deleted after it.
        base, vhost = told["CELERY_BROKER_URL"].rsplit("/", 1)
        assert base == settings.CELERY_BROKER_URL.rsplit("/", 1)[0] and vhost != settings.CELERY_BROKER_URL.rsplit("/", 1)[1]
        assert vhost.startswith("flowscope_test_") and vhost not in vhost_names(), "the run's vhost is deleted"
    else:
        assert told["CELERY_BROKER_URL"] == told["REDIS_URL"], "the broker is the run's own Redis database"
    assert told["DATABASE_URL"] != f"sqlite:///{settings.DATABASES['default']['NAME']}"
    if connection.vendor == "sqlite":
        assert not Path(told["DATABASE_URL"].removeprefix("sqlite:///")).parent.exists(), "the run's database and directory are gone"
    else:
        assert not postgres_database_exists(urlsplit(told["DATABASE_URL"]).path.lstrip("/")), "the run's database is dropped"
    assert client(told["REDIS_URL"]).dbsize() == 0, "the run's Redis database is empty again"
    assert not psutil.pid_exists(int(told["pid"]))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)  # on PostgreSQL the run's database is created through this connection
def test_a_run_that_fails_is_told_and_its_stores_are_removed(other_databases):
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="the test run exited with 3"):
        run_on_own_stores("shell", child_code("raise SystemExit(3)"), kind="test", out=lines.append)
    told = seen(lines)
    assert told[INSIDE_ENV] == str(os.getpid())
    assert_removed(told)
    assert client(settings.REDIS_URL).get("flows:bench:count") is None, "nothing in the configured Redis"


@pytest.fixture
def python_ctrl_c():
    """Ctrl-C as a Python process has it by default; an earlier test's server may have left
    another handler in this process."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_ctrl_c_stops_the_run_and_removes_its_stores(other_databases, python_ctrl_c):
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("pid "):  # the child is up, on its stores: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_on_own_stores("shell", child_code("time.sleep(120)"), kind="test", out=out)
    assert_removed(seen(lines))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C is ours again"
