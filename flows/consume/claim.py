"""The claim: a message taken off a Redis queue and recorded as held, in one atomic step.

Kombu's Redis transport takes a message with BRPOP, which removes it from the list, and only
afterwards records it as unacknowledged (QoS.append: HSET `unacked`, ZADD `unacked_index`, a
second round trip). A worker killed between the two lost the message: it was in no list and no
hash, so neither late acknowledgement nor the visibility-timeout restore could bring it back
(issue 12: one message of 10,000 reached no worker after one SIGKILL).

The claim script below does both in one EVALSHA: it pops the first item of the queue lists it is
given (in the channel's order: each priority step over the queues in fair rotation, as kombu's
BRPOP lists them) and, unless the consumer of that queue acknowledges nothing (no_ack), writes it
to `unacked` and `unacked_index` exactly as kombu 5.7.0's QoS.append does:

    HSET unacked <delivery_tag> [<the item as stored>, <exchange>, <routing_key>]
    ZADD unacked_index <time> <delivery_tag>

so restore_visible, ack, reject and restore at shutdown find it where they always did. A
message is therefore either in its queue or in `unacked` at every moment; a worker killed at any
point loses nothing, and the survivors restore what it held after the visibility timeout.

An item the script cannot read as a kombu message (not JSON, no delivery tag) is returned
unrecorded: it has no tag to be held under, and the transport dead-letters it as poison.
"""

from __future__ import annotations

import hashlib
from typing import Any

# Keys: 1 `unacked`, 2 `unacked_index`, 3... the queue lists, in claim order.
# Args: 1 the time to index the claim at (the client's clock, as kombu's QoS.append uses);
#       2 one character per queue list, "1" to record what is taken from it, "0" not (no_ack).
# Reply: nil when every list is empty; else {index of the list (0-based), the item, its
#        delivery tag or "" when the item was not recorded}.
CLAIM_SCRIPT = """
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local tag = ''
    if string.byte(ARGV[2], i - 2) == 49 then
      local ok, message = pcall(cjson.decode, item)
      if ok and type(message) == 'table' and type(message.properties) == 'table' then
        local properties = message.properties
        local info = properties.delivery_info
        if type(properties.delivery_tag) == 'string' and properties.delivery_tag ~= ''
            and type(info) == 'table' and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
          tag = properties.delivery_tag
          redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
          redis.call('ZADD', KEYS[2], ARGV[1], tag)
        end
      end
    end
    return {i - 3, item, tag}
  end
end
return false
"""
CLAIM_SHA = hashlib.sha1(CLAIM_SCRIPT.encode()).hexdigest()


def claim_command(*, unacked: str, unacked_index: str, queue_keys: list[str], record: list[bool], now: float) -> list[Any]:
    """The EVALSHA that claims one item from `queue_keys` (keys already prefixed, if the
    transport has a global key prefix)."""
    flags = "".join("1" if r else "0" for r in record)
    return ["EVALSHA", CLAIM_SHA, 2 + len(queue_keys), unacked, unacked_index, *queue_keys, repr(now), flags]


def wait_command(key: str, seconds: float) -> list[Any]:
    """Wait, without taking anything, until `key` has an item or `seconds` have passed.

    BLMOVE from a list to the same list, right to right, pops its last item and pushes it back
    where it was, atomically: the list is unchanged, and the blocking form returns as soon as
    an item arrives (Redis 6.2 or later). Redis has no command that waits on several lists
    without consuming, so the other queues of a channel are looked at again after `seconds`.
    """
    return ["BLMOVE", key, key, "RIGHT", "RIGHT", seconds]
