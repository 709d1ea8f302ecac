"""How Celery messages travel: our kombu Redis transport (reliable fetch, one client per pool),
the result backend, and the JSON serializer."""
