"""Other wire formats in, same pipeline: each module translates its format to the
OpenAI chat shape, opens a call with :func:`services.gateway.calls.open_call`
(``ingress=`` names the format in the trajectory), and translates the proxy's
OpenAI frames back. Each exposes ``routes() -> list[web.RouteDef]``."""

from services.gateway.ingress import anthropic, gemini, responses

MODULES = (anthropic, responses, gemini)
