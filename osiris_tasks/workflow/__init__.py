"""The workflow: the graph (defined once), the run state and its reducers, the node functions,
what every node gets (binding, guard) and the in-process runner. No Celery, Redis, LanceDB or
HTTP imports: nodes get their adapters as arguments."""
