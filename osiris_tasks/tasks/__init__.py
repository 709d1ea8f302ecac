"""The Celery layer: the app and its configuration, one thin task per graph node, the canvas a
run is published as, and the evaluators' join in Redis with its sweeper."""
