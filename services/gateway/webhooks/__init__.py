"""Webhook registration routes: ``POST/GET/DELETE /api/v1/webhooks`` and each
webhook's delivery attempts. Deliveries are made by ``services.webhooks``."""
