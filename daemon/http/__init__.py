"""The HTTP surface: /predict's helpers, the KServe V2 routes and codec, OpenAPI, the status page, body checks, gunicorn's config."""
