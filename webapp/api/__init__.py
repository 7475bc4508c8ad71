"""The JSON API (django-ninja), mounted at /api/. Schema at /api/openapi.json."""
