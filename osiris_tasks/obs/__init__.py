"""Observability: logging setup (text or JSON, run_id on every line) and OpenTelemetry
tracing."""
