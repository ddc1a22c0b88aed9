"""Fire-and-forget: a command to exactly one handler's queue; nobody waits."""

from flows.patterns.base import Pattern


class FireAndForget(Pattern):
    name = "fire_and_forget"
