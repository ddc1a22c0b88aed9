"""Hourly sums of the flow graph's aggregates, filled from the rows already stored."""

from django.db import migrations, models

BATCH = 2000


def _merged(into: list[int], other: list[int]) -> list[int]:
    if len(into) < len(other):
        into.extend([0] * (len(other) - len(into)))
    for i, n in enumerate(other):
        into[i] += n
    return into


def sum_the_stored_hours(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Each edge's 10-second rows summed per hour (a day of 60 edges: about 1,500 sums)."""
    EdgeStat = apps.get_model("tracing", "EdgeStat")
    EdgeHour = apps.get_model("tracing", "EdgeHour")
    hours: dict[tuple, dict] = {}
    columns = ("bucket", "app", "source", "target", "queue", "count", "errors", "dead", "histogram", "waits")
    for bucket, app, source, target, queue, count, errors, dead, latencies, waits in EdgeStat.objects.values_list(*columns).iterator(chunk_size=BATCH):
        key = (bucket.replace(minute=0, second=0, microsecond=0), app, source, target, queue)
        hour = hours.setdefault(key, {"count": 0, "errors": 0, "dead": 0, "histogram": [], "waits": []})
        hour["count"] += count
        hour["errors"] += errors
        hour["dead"] += dead
        _merged(hour["histogram"], latencies or [])
        _merged(hour["waits"], waits or [])
    EdgeHour.objects.bulk_create(
        [EdgeHour(bucket=key[0], app=key[1], source=key[2], target=key[3], queue=key[4], **sums) for key, sums in hours.items()],
        batch_size=BATCH,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("tracing", "0005_tracesummary_failed"),
    ]

    operations = [
        migrations.CreateModel(
            name="EdgeHour",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("app", models.CharField(blank=True, default="", help_text="the attached app (flowscope.app); empty for Flowscope's own flows", max_length=100)),
                ("source", models.CharField(max_length=300)),
                ("target", models.CharField(max_length=300)),
                ("queue", models.CharField(blank=True, default="", help_text="the queue a sender -> handler edge went through; empty otherwise", max_length=300)),
                ("count", models.BigIntegerField(default=0)),
                ("errors", models.BigIntegerField(default=0)),
                ("dead", models.BigIntegerField(default=0)),
                ("histogram", models.JSONField(default=list, help_text="latency counts per bucket of tracing.histogram.BOUNDS_MS")),
                ("waits", models.JSONField(blank=True, default=list, help_text="queue-wait counts per bucket of tracing.histogram.BOUNDS_MS; empty when no span said")),
                ("bucket", models.DateTimeField(help_text="start of the hour")),
            ],
            options={
                "indexes": [models.Index(fields=["bucket"], name="edgehour_time")],
                "constraints": [models.UniqueConstraint(fields=("bucket", "app", "source", "target", "queue"), name="edgehour_once")],
            },
        ),
        migrations.RunPython(sum_the_stored_hours, migrations.RunPython.noop),
    ]
