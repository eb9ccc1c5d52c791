"""Fakes of what the test machine cannot reach (LLM providers). Each speaks its
documented wire format, byte for byte where it matters, and is scriptable per test."""
