"""Speaking an assessment: ask the sidecar to speak, wait for the speaker's acknowledgement.

Runs as its own task on its own queue; a slow or absent speaker never delays or fails a run.
"""

from __future__ import annotations

import logging
import re
import time

import redis

from osiris_tasks.adapters.events import EventBus
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.errors import OsirisError
from osiris_tasks.keys import tts_ack_channel

__all__ = ["first_sentence", "speak_assessment"]

logger = logging.getLogger(__name__)

MAX_SPOKEN_CHARS = 150
EXAGGERATION = 0.5
LAST_SPEAK_TTL_S = 86_400
SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s")


def first_sentence(text: str, max_chars: int = MAX_SPOKEN_CHARS) -> str:
    """The first sentence of `text`, cut to `max_chars`."""
    sentence = SENTENCE_END_RE.split(text.strip(), maxsplit=1)[0]
    return sentence[:max_chars]


def speak_assessment(
    bus: EventBus,
    sidecar: SidecarClient,
    *,
    run_id: str,
    transaction_id: str,
    text: str,
    ack_timeout_s: float,
) -> dict:
    """Speak the first sentence of `text`; publish `hermes.assessment.spoken` once acknowledged."""
    channel = tts_ack_channel(transaction_id)
    pubsub = bus.redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)  # before speaking, or a fast ack is missed
        started = time.monotonic()
        sidecar.speak(
            first_sentence(text),
            transaction_id=transaction_id,
            exaggeration=EXAGGERATION,
            run_id=run_id,
        )
        if not _wait_for_message(pubsub, ack_timeout_s):
            logger.warning(
                "run_id=%s no TTS ack on %s within %.1f s", run_id, channel, ack_timeout_s
            )
            return {"spoken": False, "reason": "no acknowledgement"}
        speak_ms = int((time.monotonic() - started) * 1000)
        bus.redis.set(f"last_speak_ms.{transaction_id}", speak_ms, ex=LAST_SPEAK_TTL_S)
        bus.publish_once(
            "hermes.assessment.spoken",
            {"transaction_id": transaction_id, "orchestrator_run_id": run_id, "speak_ms": speak_ms},
            run_id=run_id,
        )
        return {"spoken": True, "speak_ms": speak_ms}
    except (OsirisError, redis.RedisError) as exc:
        logger.warning("run_id=%s TTS failed: %s", run_id, exc)
        return {"spoken": False, "reason": str(exc)}
    finally:
        pubsub.close()


def _wait_for_message(pubsub, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if pubsub.get_message(timeout=min(left, 1.0)):
            return True
    return False
