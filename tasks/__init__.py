"""Job families: each subpackage holds one family's options, pipeline and Celery task."""
