"""Watching a Celery app through its own events, for apps whose workers cannot run flowscope-agent.

    manage.py watch_celery --broker amqp://... --app shop

The watcher is a Celery app object of its own (the broker URL and nothing else: none of the
watched app's code) that consumes the app's monitoring events with Celery's public
`app.events.Receiver`, and turns them into what the agent would have reported:

    task-sent          a PRODUCER span "send <task>" (only when the producers set task_send_sent_event)
    task-received ...  task states for the live task list (received, started, succeeded, failed, retried, revoked)
    task-succeeded,
    task-failed,
    task-retried,
    task-revoked       a CONSUMER span "process <task>" per execution: runtime, state, worker, queue wait
    worker-*           workers for the live view: online, heartbeat, active and processed counts
    task-failed        also a dead letter, marked NOT requeueable (see below)

Trace ids come from Celery's root_id (a UUID root id is the trace id as it is written, without the
dashes), span ids from the task id and attempt, parents from parent_id: a chain, a group, a chord
and a task sent from a task stay in one trace, and the same event seen twice makes the same span.

What this mode lacks, and the console says so: events carry args and kwargs as truncated reprs,
never the call, so a failed task cannot be requeued exactly; there is no agent in the app to send a
requeue on its broker either. Queue names are known only from task-sent events, and a worker's
pool and concurrency are not in its heartbeats.

The watcher listens; it turns nothing on. Workers send task events only when started with `-E`
(or `worker_send_task_events = True`, or `celery control enable_events`); it says so when a
worker processes tasks and sends none.
"""
