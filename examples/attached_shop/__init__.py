"""A shop written with nothing but Celery, which `make demo` runs through flowscope-agent.

No `flows`, no Django, no Flowscope import: the demo starts its worker as
`flowscope-agent celery -A examples.attached_shop.shop worker -Q attached_shop,attached_shop.notify`
and its producer (`examples.attached_shop.producer`) through the agent too, so the console shows
its chains, groups and chords beside Flowscope's own flows, and its failures as dead letters.

This package's own module holds only names the demo needs to start it; importing it makes no
Celery app (one made in the demo's process would become Celery's current app there).
"""

APP = "attached_shop"  # the app's main name: how the console names it
QUEUES = ("attached_shop", "attached_shop.notify")
