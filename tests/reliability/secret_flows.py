"""A flow whose messages carry secrets, for the redaction check (check 12).

Its handler fails the way real code does: the exception message quotes the card and the e-mail
address it could not charge. Loaded by the redaction check itself (not at collection, so the
session worker never subscribes to its queue) and by the worker that check starts.
"""

from __future__ import annotations

from pydantic import BaseModel

import flows
from flows.core.errors import PoisonMessage

QUEUE = "t.secrets"


class Signup(BaseModel):
    customer_email: str
    card_number: str
    access_token: str
    note: str = ""
    outcome: str = "fail"  # fail (retried, then dead), poison (dead at once) or ok


flows.message_type("secret.signup", pattern="fire_and_forget", schemas={1: Signup})


@flows.handler("secret.signup", consumer="t_secret_signup", queue=QUEUE, max_attempts=2, backoff=flows.Backoff(initial=0.05, factor=1.0, maximum=0.05))
def signup(message: flows.Message) -> None:
    payload = message.payload
    if payload["outcome"] == "poison":
        raise PoisonMessage(f"the card {payload['card_number']} of {payload['customer_email']} is blocked")
    if payload["outcome"] == "fail":
        raise ValueError(f"cannot charge card {payload['card_number']} for {payload['customer_email']}")
