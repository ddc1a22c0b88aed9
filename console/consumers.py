"""The live websocket: a signed-in browser gets a full snapshot on connect and one a second after."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console import live

UNAUTHORISED = 4401


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=UNAUTHORISED)
            return
        await self.channel_layer.group_add(live.GROUP, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(live.GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The one thing a browser may ask: {"type": "refresh"}, for a snapshot now."""
        if isinstance(content, dict) and content.get("type") == "refresh":
            await self.send_snapshot()
        else:
            await self.send_json({"type": "error", "error": 'unknown request; the only one is {"type": "refresh"}'})

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None  # answered as an unknown request, the socket stays open

    async def send_snapshot(self) -> None:
        frame = await database_sync_to_async(live.snapshot)()
        await self.send_json({"type": "snapshot", "frame": frame})

    async def live_frame(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "snapshot", "frame": event["frame"]})
