"""Telling every API process that a pool's template is sold out.

The first process to hear ``SOLD_OUT`` from the gate raises its local flag
and publishes it; the others raise theirs on receipt, so the flood that
follows a sell-out is answered from memory everywhere, without a round trip
to the gate. A lost message costs only that round trip: the gate still
answers ``SOLD_OUT`` to whoever asks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
import structlog
from redis.cluster import RedisCluster

__all__ = ["LocalSoldOut", "RedisSoldOut"]

log = structlog.get_logger(__name__)

_SEP = "\x1f"
# How long the listener blocks for a message before looking at its stop flag.
LISTEN_POLL_S = 0.5
# A pool id and a template id, with the separator; anything longer is not ours.
MESSAGE_CHARS_MAX = 200


class LocalSoldOut:
    """One process: its own flag is all there is to raise."""

    def publish(self, pool: str, template_id: str) -> None:
        """Nobody else to tell."""

    def listen(self, on_sold_out: Callable[[str, str], None]) -> None:
        """Nobody else to hear from."""

    def close(self) -> None:
        """Nothing to close."""


class RedisSoldOut:
    """Sold-out flags over Redis pub/sub (on a cluster, published to every node)."""

    def __init__(self, client: redis.Redis | RedisCluster, *, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, pool: str, template_id: str) -> None:
        try:
            self._client.publish(self._channel, f"{pool}{_SEP}{template_id}")
        except redis.RedisError as error:  # the others ask the gate once more instead
            log.warning("sold_out_publish_failed", error_type=type(error).__name__)

    def listen(self, on_sold_out: Callable[[str, str], None]) -> None:
        """Call ``on_sold_out(pool, template_id)`` for every flag published, from a thread."""
        assert self._thread is None, "already listening"
        self._thread = threading.Thread(
            target=self._run, args=(on_sold_out,), name="lequan-sold-out", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, on_sold_out: Callable[[str, str], None]) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_POLL_S
                    )
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    if len(text) > MESSAGE_CHARS_MAX or text.count(_SEP) != 1:
                        continue
                    pool, template_id = text.split(_SEP)
                    on_sold_out(pool, template_id)
            except redis.RedisError as error:  # reconnect after a pause
                log.warning("sold_out_listen_failed", error_type=type(error).__name__)
                self._stop.wait(1.0)
            finally:
                pubsub.close()
