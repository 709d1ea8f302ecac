"""The outside world, behind small classes that take their clients as arguments: the LLM
sidecar client and its circuit breaker, events, the portfolio keys, the tick stash, TTS, the
dead-letter list, and `Resources`, which builds them from settings for one process."""
