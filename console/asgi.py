import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

# Initialise Django before anything imports models; websocket routes join with the console issue.
django_asgi_app = get_asgi_application()

from tracing import setup  # noqa: E402

setup.set_default_service("flowscope-web")

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app})
