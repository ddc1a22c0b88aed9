"""Run by Python's site module at the start of every process `flowscope-agent` starts.

`flowscope-agent` puts this folder first on PYTHONPATH, so this module is the one `site`
imports; it attaches the agent to Celery's signals (they fire for every app in the process, so
it does not matter when or where the app is made), then runs the sitecustomize that would have
run without it, if there is one further down the path. A failure here is logged and the
program starts anyway: the agent never keeps the app from running.
"""

import importlib.machinery
import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import flowscope_agent

    flowscope_agent.attach()
except Exception:
    logging.getLogger("flowscope_agent").exception("flowscope-agent could not attach; the program runs without it")


def _run_the_next_sitecustomize() -> None:
    rest = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_the_next_sitecustomize()
