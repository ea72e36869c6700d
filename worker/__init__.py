"""mlworker runtime: the Celery app, model registry, memory guard, batching and the CLI."""
