"""Evaluating the rules, with hysteresis.

For each enabled rule, claimed by a conditional update so that two beat nodes never evaluate
one rule at once (a claim lasts CLAIM_SECONDS; a node that dies holding it delays the rule
that long):

1. Ask the rule's condition which subjects hold now.
2. A subject that holds is remembered from the first time it held; once it has held for the
   rule's `for_seconds` and has no firing alert, an alert fires (one "fired" notice per channel).
   While firing, a subject that holds again cancels any clearing under way: no notice.
3. A firing subject that no longer holds starts clearing; once clear for `clear_seconds` its
   alert resolves (one "resolved" notice). A subject that stops holding before it fired is
   forgotten.

A flapping value therefore notifies once when it first fires and once when it has been quiet
for the clear duration. A silenced rule (or a muted failure group, for failure-group alerts)
still records its alerts and deliveries, marked muted, and sends nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from console.alerts.conditions import CONDITIONS, summary
from console.alerts.models import Alert, AlertRule, AlertState, DeliveryKind, RuleKind
from console.alerts.notify import notify
from console.alerts.silences import silenced_fingerprints, silenced_rule_ids

log = logging.getLogger(__name__)
CLAIM_SECONDS = 30


def _claim(rule_id: int, now: datetime) -> bool:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return AlertRule.objects.filter(free, pk=rule_id, enabled=True).update(lease_until=now + timedelta(seconds=CLAIM_SECONDS)) == 1


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def evaluate_rule(rule: AlertRule, *, now: datetime, muted_rules: set[int], muted_groups: set[str]) -> dict[str, int]:
    """One rule's step of the hysteresis (see the module's docstring): what fired and resolved."""
    held = CONDITIONS[rule.kind](rule, now, muted_groups)
    subjects: dict[str, dict[str, Any]] = rule.memory.setdefault("subjects", {})
    firing = {a.subject: a for a in rule.alerts.filter(state=AlertState.FIRING)}
    fired = resolved = 0
    for subject, seen in held.items():
        memo = subjects.setdefault(subject, {"since": now.isoformat()})
        memo["clear_since"] = None
        alert = firing.get(subject)
        if alert is not None:
            Alert.objects.filter(pk=alert.pk).update(last_observed=seen)
            continue
        if now - _at(memo["since"]) >= timedelta(seconds=rule.for_seconds):  # type: ignore[operator]
            muted = rule.pk in muted_rules or (rule.kind == RuleKind.FAILURE_GROUP and subject in muted_groups)
            alert = Alert.objects.create(rule=rule, subject=subject, started_at=now, observed=seen, last_observed=seen, summary=summary(rule, subject, seen), muted=muted)
            notify(alert, DeliveryKind.FIRED, muted=muted)
            fired += 1
    for subject in list(subjects):
        if subject in held:
            continue
        alert = firing.get(subject)
        if alert is None:
            del subjects[subject]  # it stopped holding before it fired
            continue
        memo = subjects[subject]
        memo["clear_since"] = memo.get("clear_since") or now.isoformat()
        if now - _at(memo["clear_since"]) >= timedelta(seconds=rule.clear_seconds):  # type: ignore[operator]
            if Alert.objects.filter(pk=alert.pk, state=AlertState.FIRING).update(state=AlertState.RESOLVED, resolved_at=now):
                alert.state, alert.resolved_at = AlertState.RESOLVED, now
                muted = rule.pk in muted_rules or (rule.kind == RuleKind.FAILURE_GROUP and subject in muted_groups)
                notify(alert, DeliveryKind.RESOLVED, muted=muted or alert.muted)
                resolved += 1
            del subjects[subject]
    # Alerts left firing for subjects the memory lost (a rule edited in between): resolve them on the next clear pass.
    for subject in set(firing) - set(subjects) - set(held):
        subjects[subject] = {"since": firing[subject].started_at.isoformat(), "clear_since": now.isoformat()}
    return {"fired": fired, "resolved": resolved}


def evaluate_rules(now: datetime | None = None) -> dict[str, int]:
    """Every enabled rule this node can claim, each in a transaction of its own."""
    now = now or timezone.now()
    muted_rules, muted_groups = silenced_rule_ids(now), silenced_fingerprints(now)
    totals = {"rules": 0, "fired": 0, "resolved": 0}
    for rule_id in AlertRule.objects.filter(enabled=True).order_by("id").values_list("pk", flat=True):
        if not _claim(rule_id, now):
            continue
        try:
            with transaction.atomic():
                rule = AlertRule.objects.get(pk=rule_id)
                outcome = evaluate_rule(rule, now=now, muted_rules=muted_rules, muted_groups=muted_groups)
                AlertRule.objects.filter(pk=rule_id).update(memory=rule.memory, evaluated_at=now)
            totals["rules"] += 1
            totals["fired"] += outcome["fired"]
            totals["resolved"] += outcome["resolved"]
        except Exception:  # one broken rule must not stop the others' alerts
            log.exception("alert rule %s could not be evaluated", rule_id)
        finally:
            AlertRule.objects.filter(pk=rule_id).update(lease_until=None)
    return totals
