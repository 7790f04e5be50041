"""The HTTP surface: readiness (one rule for /readyz and the V2 ready routes), the arrival deadline, the KServe V2
routes and codec, OpenAPI, the status page, body checks, gunicorn's config."""
