import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Under ASGI a request's database work may run on any of several threads, each keeping its own
# connection: Django's docs advise against persistent connections there, so the web process
# opens one per request (the workers and the collector keep theirs: console/settings.py).
conn_max_age_given = "DATABASE_CONN_MAX_AGE" in os.environ
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "0")

# Initialise Django before anything imports models.
django_asgi_app = get_asgi_application()
if not conn_max_age_given:
    # The settings have read it; a process this one starts (the tests start workers after
    # importing this module) must not inherit it and drop its connection after every task.
    del os.environ["DATABASE_CONN_MAX_AGE"]

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from console.routing import websocket_urlpatterns  # noqa: E402
from tracing import setup  # noqa: E402

setup.set_default_service("flowscope-web")

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Foreign origins are refused before the consumer runs; anonymous users are closed by it.
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
