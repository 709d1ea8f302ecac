"""Every Redis key, Pub/Sub channel and Celery queue name osiris_tasks uses, in one place.

Keys are written with these names and nowhere else; each module that owns the data behind a
key imports its name from here. (kombu's own keys — queues' lists, `unacked`, `unacked_index`,
and the `<queue>\\x06\\x16bell` streams of `transport/fetch.py` — follow kombu's naming.)
"""

from __future__ import annotations

# Celery queues (the exchange and routing key of each are its name).
DEFAULT_QUEUE = "osiris.default"  # CPU-light nodes, LanceDB writes, events
SIDECAR_QUEUE = "osiris.sidecar"  # the nodes that call the LLM sidecar
TTS_QUEUE = "osiris.tts"  # `osiris.speak`
QUEUES = (DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE)

# Pub/Sub channels.
MARKET_CHANNEL = "market.ticks"  # ticks in: the bridge's default `--market_channel`
ADVICE_CHANNEL = "advice.generated"  # one per run, whatever its outcome
PROPOSAL_CREATED_CHANNEL = "phi3.proposal.created"  # accepted and assessed runs
PROPOSAL_ASSESSED_CHANNEL = "phi3.proposal.assessed"
TTS_ACK_CHANNEL_PREFIX = "tts.acknowledged."  # + transaction_id: the sidecar's TTS ack
ORDER_FILLED_CHANNEL = "order.filled"  # the paper book filled an order
PORTFOLIO_UPDATED_CHANNEL = "portfolio.updated"  # the paper book after a run's fills
RISK_HALTED_CHANNEL = "risk.halted"  # the kill switch was thrown (by an operator or a loss)
RISK_RESUMED_CHANNEL = "risk.resumed"

# Redis Streams.
MARKET_STREAM = "osiris:market:ticks"  # ticks in with `--source stream`: `--market_stream`
BRIDGE_GROUP = "osiris-bridge"  # the bridges' consumer group on the market stream
EVENTS_STREAM = "osiris:events"  # OSIRIS_EVENTS_STREAM's usual name: every event, mirrored

# Keys.
NAV_KEY = "osiris:portfolio:nav"  # kept by the paper or an external book; read by the gate
DAILY_PNL_KEY = "osiris:portfolio:daily_pnl"
BOOK_KEY = "osiris:book"  # the paper book, JSON (adapters/book.py)
BOOK_ORDER_PREFIX = "osiris:book:order:"  # + run_id: the run's decision and order, once
BOOK_TICKS_PREFIX = "osiris:book:ticks:"  # + run_id: the run's ticks applied to the book, once
COMPLETIONS_STAGED_PREFIX = "osiris:completions:staged:"  # + store namespace: rows to write
COMPLETIONS_FLUSH_PREFIX = "osiris:completions:flush:"  # + store namespace: the writer's lock
HALT_KEY = "osiris:risk:halt"  # the kill switch: JSON {reason, by, at, session}; no expiry
TICKS_PREFIX = "osiris:ticks:"  # + run_id: a large batch's ticks (adapters/tickstash.py)
PUBLISHED_MARKER_PREFIX = "osiris:published:"  # + event_id: published once (adapters/events.py)
DEADLETTER_KEY = "osiris:deadletter:runs"  # run rows LanceDB refused (adapters/deadletter.py)
BRIDGE_STATS_KEY = "osiris:bridge:stats"  # hash: the bridge's counters
BRIDGE_FORMED_PREFIX = "osiris:bridge:formed:"  # + stream:group: hash run_id -> its entry ids
BRIDGE_CLAIM_PREFIX = "osiris:bridge:claim:"  # + stream:group: the lock of one reclaimer
EVENTS_OUTBOX_KEY = "osiris:events:outbox"  # list: events a run could not publish yet
JOIN_PREFIX = "osiris:join:"  # + run_id: the evaluators' join (adapters/join.py)
JOINS_DUE_KEY = "osiris:joins:due"  # sorted set: joins by deadline
LOCK_PREFIX = "osiris:lock"  # + :<table>:<key>, :<table>, :maintain:...: the store's locks
SEEN_PREFIX = "osiris:seen"  # + :<table>:<key>: rows never written before (store/claims.py)
SEEN_SINCE_KEY = "osiris:seen:since"  # hash: from when seen marks are trusted
STORE_COMMITS_PREFIX = "osiris:store:commits"  # + :<table>: commits, for maintenance


def tts_ack_channel(transaction_id: str) -> str:
    """The channel the sidecar acknowledges `transaction_id`'s speech on."""
    return TTS_ACK_CHANNEL_PREFIX + transaction_id
