"""The pattern lab: one order workload run synchronously and through Flowscope, side by side.

`manage.py lab` starts four downstream HTTP services, sends the same orders to them as a
blocking chain of calls and as a fan-out on Celery, under four scenarios, and stores what it
measured as a `LabRun` for the console's Lab page.
"""
