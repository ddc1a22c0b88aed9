import pytest

import flows
from flows.core.errors import ConfigurationError
from flows.core.registry import catalog
from flows.core.retry import Backoff
from flows.patterns import check_catalog
from tests.support.brokers import redis_only_because


@pytest.fixture
def scratch_catalog():
    saved = catalog.snapshot()
    yield catalog
    catalog.restore(saved)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    backoff = Backoff(initial=1, factor=2, maximum=5, jitter=0.5)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 5), (10, 5)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(set(delays)) > 100, "jittered, so retries of many messages do not stampede together"
    assert Backoff(initial=1, jitter=0).delay(3) == 4


@redis_only_because("the visibility timeout bounds delays on Redis; RabbitMQ's limit: tests/test_rabbitmq.py")
def test_a_backoff_longer_than_half_the_visibility_timeout_is_refused(scratch_catalog, settings):
    settings.FLOWS_VISIBILITY_TIMEOUT = 100
    flows.message_type("x.slow", pattern="fire_and_forget")
    with pytest.raises(ConfigurationError, match="exceeds half the broker visibility timeout"):
        flows.handler("x.slow", backoff=Backoff(maximum=60))(lambda m: None)


@redis_only_because("the visibility timeout bounds delays on Redis; RabbitMQ's limit: tests/test_rabbitmq.py")
def test_a_publish_delay_longer_than_half_the_visibility_timeout_is_refused(settings):
    from flows.produce.publishing import build_envelope, publish_to

    settings.FLOWS_VISIBILITY_TIMEOUT = 100
    with pytest.raises(ConfigurationError, match="a delay of 60s exceeds half the broker visibility timeout"):
        publish_to(catalog.handler("t_command"), build_envelope("test.command", {"key": "k"}), countdown=60)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"initial": -1}, "0 <= initial"),
        ({"factor": 0.5}, "factor >= 1"),
        ({"initial": 10, "maximum": 1}, "initial <= maximum"),
        ({"jitter": 2}, "jitter must lie between 0 and 1"),
    ],
)
def test_nonsense_backoffs_are_refused(kwargs, error):
    with pytest.raises(ConfigurationError, match=error):
        Backoff(**kwargs)


def test_the_catalog_check_names_what_contradicts(scratch_catalog):
    flows.handler("x.undeclared", consumer="x_orphan")(lambda m: None)
    with pytest.raises(ConfigurationError, match="handler 'x_orphan' consumes 'x.undeclared', which no message_type"):
        check_catalog()


def test_a_fire_and_forget_type_needs_exactly_one_handler(scratch_catalog):
    flows.message_type("x.cmd", pattern="fire_and_forget")
    flows.handler("x.cmd", consumer="x_one", queue="x.q1")(lambda m: None)
    flows.handler("x.cmd", consumer="x_two", queue="x.q2")(lambda m: None)
    with pytest.raises(ConfigurationError, match=r"fire_and_forget type 'x.cmd' needs exactly 1 handler\(s\), has 2"):
        check_catalog()


def test_declarations_are_checked_as_they_are_made(scratch_catalog):
    with pytest.raises(LookupError, match="unknown pattern 'pub_sub'"):
        flows.message_type("x.bad", pattern="pub_sub")
    flows.message_type("x.twice", pattern="fire_and_forget")
    with pytest.raises(ConfigurationError, match="declared twice, differently"):
        flows.message_type("x.twice", pattern="fan_out")
    with pytest.raises(ConfigurationError, match="max_attempts must be at least 1"):
        flows.handler("x.twice", max_attempts=0)
    with pytest.raises(ConfigurationError, match="watermarks need 0 <= low < high"):
        flows.queue("x.q", high=5, low=5)
    with pytest.raises(ConfigurationError, match="mode must be 'block' or 'raise'"):
        flows.queue("x.q", high=5, low=1, mode="drop")
    flows.handler("x.twice", consumer="x_taken")(lambda m: None)
    with pytest.raises(ConfigurationError, match="consumer name 'x_taken' is taken"):
        flows.handler("x.twice", consumer="x_taken")(lambda m: None)


def test_a_saga_step_retrying_longer_than_the_stall_time_is_refused(scratch_catalog, settings):
    settings.FLOWS_SAGA_STALL_SECONDS = 5
    flows.saga("x.saga", [flows.step("one", action="x.saga.one")])
    flows.handler("x.saga.one", backoff=Backoff(maximum=10))(lambda m: None)
    with pytest.raises(ConfigurationError, match="the sweeper would resume it mid-retry"):
        check_catalog()
    with pytest.raises(ConfigurationError, match="needs at least one step"):
        flows.saga("x.empty", [])


@redis_only_because("RabbitMQ refuses such names (tests/test_rabbitmq.py)")
def test_on_redis_a_queue_name_may_end_with_another_queues_name(scratch_catalog):
    flows.message_type("x.event", pattern="fan_out")
    flows.handler("x.event", consumer="x_short", queue="x.zq")(lambda m: None)
    flows.handler("x.event", consumer="x_long", queue="billing.x.zq")(lambda m: None)
    check_catalog()
    assert {"x.zq", "billing.x.zq"} <= set(catalog.queue_names())
