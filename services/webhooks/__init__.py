"""The webhook delivery service (``python -m services.webhooks``)."""
