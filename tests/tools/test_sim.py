"""The tick simulator: GBM ticks, CSV/JSONL replay, and paced publishing on a real Redis."""

from __future__ import annotations

import itertools
import math
import threading
import time

import pytest
import redis
from conftest import wait_for
from pipeline_helpers import EventListener

from osiris_tasks.domain.ticks import validate_tick
from osiris_tasks.errors import ConfigError
from osiris_tasks.tools.sim import publish, replay_ticks, synthetic_ticks

CHANNEL = "market.ticks"
NOW = 1_764_000_000.0


def take(ticks, n):
    return list(itertools.islice(ticks, n))


def gbm(seed, **kw):
    return synthetic_ticks(["AAPL", "MSFT", "SPY"], seed=seed, clock=lambda: NOW, **kw)


def test_gbm_is_deterministic_round_robin_positive_and_valid():
    first, again, other = take(gbm(7), 3000), take(gbm(7), 3000), take(gbm(8), 3000)
    assert first == again and first != other
    assert [t["symbol"] for t in first[:6]] == ["AAPL", "MSFT", "SPY"] * 2
    assert all(t["close"] > 0 and t["low"] <= t["close"] <= t["high"] for t in first)
    assert all(t["volume"] > 0 and t["timestamp"] == NOW for t in first)
    for tick in first:
        validate_tick(tick, default_symbol="SPY")  # everything it makes enters a batch


def test_gbm_step_follows_the_formula():
    ticks = take(
        synthetic_ticks(
            ["X"], seed=1, start_prices={"X": 50.0}, dt_s=2.0, drift=0.01, volatility=0.0
        ),
        3,
    )
    assert [t["close"] for t in ticks] == pytest.approx(
        [50 * math.exp(0.02 * k) for k in (1, 2, 3)]
    )
    assert ticks[1]["open"] == ticks[0]["close"]


def test_gbm_timestamps_are_now_by_default():
    before = time.time()
    tick = next(synthetic_ticks(["AAPL"], seed=1))
    assert before <= tick["timestamp"] <= time.time()


def test_csv_replay_of_ohlcv_columns_without_symbol(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2024-01-02,187.15,188.44,183.89,185.64,185.4,82488700\n"
        "\n"
        "2024-01-03,184.22,185.88,183.43,184.25,184.0,58414500\n"
    )
    ticks = list(replay_ticks(path, default_symbol="AAPL"))
    assert ticks[0] == {
        "symbol": "AAPL",
        "timestamp": "2024-01-02",
        "open": 187.15,
        "high": 188.44,
        "low": 183.89,
        "close": 185.64,
        "volume": 82488700.0,
    }
    assert len(ticks) == 2 and ticks[1]["close"] == 184.25
    assert validate_tick(ticks[0], default_symbol="SPY")["timestamp"] == 1_704_153_600.0


def test_csv_replay_keeps_a_symbol_column_and_stamps_missing_times(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("SYMBOL,close,volume\nMSFT,410.5,\nNVDA,not-a-number,10\n")
    before = time.time()
    ticks = list(replay_ticks(path, default_symbol="SPY"))
    assert [t["symbol"] for t in ticks] == ["MSFT", "NVDA"]
    assert "volume" not in ticks[0] and ticks[1]["close"] == "not-a-number"  # the bridge rejects
    assert all(before <= t["timestamp"] <= time.time() for t in ticks)


def test_csv_without_close_column_is_a_config_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("date,price\n2024-01-02,1\n")
    with pytest.raises(ConfigError, match="close"):
        list(replay_ticks(path))
    with pytest.raises(ConfigError, match="does not exist"):
        replay_ticks(tmp_path / "missing.csv")


def test_jsonl_replay(tmp_path):
    path = tmp_path / "ticks.jsonl"
    path.write_text('{"symbol": "AAPL", "close": 1.5, "timestamp": 1764000000}\n\n{"close": 2.5}\n')
    ticks = list(replay_ticks(path))
    assert ticks[0] == {"symbol": "AAPL", "close": 1.5, "timestamp": 1764000000}
    assert "symbol" not in ticks[1] and ticks[1]["timestamp"] > NOW  # the bridge defaults it
    assert list(replay_ticks(path, default_symbol="QQQ"))[1]["symbol"] == "QQQ"
    sniffed = tmp_path / "ticks.txt"
    sniffed.write_text('{"close": 3}\n')
    assert list(replay_ticks(sniffed))[0]["close"] == 3
    path.write_text('{"close": 1}\n[1, 2]\n')
    with pytest.raises(ConfigError, match=":2: a tick must be a JSON object"):
        list(replay_ticks(path))


@pytest.fixture
def channel_listener(redis_url):
    listener = EventListener(redis_url, CHANNEL)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.pubsub_numsub(CHANNEL)[0][1] >= 1, timeout_s=5)
    yield client, listener
    listener.close()
    client.close()


def test_publish_paces_at_the_requested_rate(channel_listener):
    client, listener = channel_listener
    started = time.monotonic()
    sent = publish(client, CHANNEL, gbm(1), rate_per_s=200, duration_s=0.5)
    elapsed = time.monotonic() - started
    assert 90 <= sent <= 101 and 0.45 <= elapsed < 0.8
    wait_for(lambda: len(listener.messages) == sent, timeout_s=5)
    assert listener.messages[0][1]["symbol"] == "AAPL"


def test_publish_stops_at_max_ticks_iterator_end_and_stop(channel_listener):
    client, listener = channel_listener
    assert (
        publish(client, CHANNEL, gbm(1), rate_per_s=None, duration_s=None, max_ticks=1234) == 1234
    )
    assert publish(client, CHANNEL, take(gbm(2), 7), rate_per_s=None, duration_s=None) == 7
    stop = threading.Event()
    stop.set()
    assert publish(client, CHANNEL, gbm(3), rate_per_s=None, duration_s=None, stop=stop) == 0
    assert publish(client, CHANNEL, gbm(3), rate_per_s=10, duration_s=5, max_ticks=0) == 0
    wait_for(lambda: len(listener.messages) == 1241, timeout_s=5)


def test_publish_stops_when_stop_is_set_while_pacing(channel_listener):
    client, _ = channel_listener
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    sent = publish(client, CHANNEL, gbm(1), rate_per_s=20, duration_s=30, stop=stop)
    assert time.monotonic() - started < 1.5 and 1 <= sent < 30
