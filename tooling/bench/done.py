"""The one Redis call a bench task makes when it is done, shared by Flowscope's handlers and the
plain Celery app (which imports nothing of Django): the same work per message on every side."""

# KEYS: counter, first, last. ARGV: now. One round trip per message.
DONE_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('SET', KEYS[3], ARGV[1])
return n
"""
