"""`flowscope-agent COMMAND [ARGS...]`: run COMMAND with Flowscope attached, as opentelemetry-instrument does.

It checks the configuration, puts the bootstrap folder first on PYTHONPATH (its sitecustomize
attaches the agent in every Python process the command starts, pool processes included) and
replaces itself with COMMAND: same pid, same signals, same exit status.
"""

from __future__ import annotations

import os
import sys

from flowscope_agent import bootstrap, config

USAGE = """usage: flowscope-agent COMMAND [ARGS...]

Runs COMMAND with Flowscope attached to every Celery app in it, e.g.
    flowscope-agent celery -A proj worker -l info
    flowscope-agent python producer.py

FLOWSCOPE_URL    the console's base URL (spans go to FLOWSCOPE_URL/v1/traces)
FLOWSCOPE_TOKEN  an API token of the console's agent role (manage.py create_token --name N --role agent)
FLOWSCOPE_APP    the app's name in the console (default: the Celery app's main name)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    try:
        config.read()
    except config.ConfigError as exc:
        sys.stderr.write(f"flowscope-agent: {exc}\n")
        return 2
    here = os.path.dirname(os.path.abspath(bootstrap.__file__))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
    try:
        os.execvp(args[0], args)
    except OSError as exc:  # not found, not executable: say so the way a shell would
        sys.stderr.write(f"flowscope-agent: cannot run {args[0]!r}: {exc.strerror}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: execvp replaced this process
