from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class WebhookSettings(CommonSettings):
    #: seconds to wait before each retry of a failed delivery; after the last
    #: one the delivery is given up (1 min, 5 min, 30 min, 2 h, 8 h: ~10.6 h)
    webhook_retry_delays: list[float] = Field(default=[60, 300, 1800, 7200, 28800])
    webhook_timeout: float = Field(default=10.0, gt=0)
