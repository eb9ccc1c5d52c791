"""Per-collection secrets (``/api/v1/secrets``) and ``jetty.secret_params``."""
