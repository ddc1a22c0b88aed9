"""`manage.py bench`: what Flowscope costs the flows it runs, measured against plain Celery."""
