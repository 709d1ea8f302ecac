"""The pure rules: tick validation, market summaries, the proposal schema and prompt, the risk
gate, run ids. No I/O, no Celery, Redis, LanceDB or HTTP."""
