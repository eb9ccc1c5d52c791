"""Event contracts: the envelope, payload models per family, and the type registry."""

from shared.events.envelope import Envelope
from shared.events.registry import EventData, parse_data, type_name

__all__ = ["Envelope", "EventData", "parse_data", "type_name"]
