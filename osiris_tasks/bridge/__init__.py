"""The tick bridge (`osiris-bridge`): Redis Pub/Sub ticks in, batched runs out to Celery, with
backpressure, counters and Prometheus metrics."""
