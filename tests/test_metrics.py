"""Prometheus metrics of every service, scraped from a running stack after real
calls: the gateway on its own port, proxy / recorder / runner on their health
ports. Labels stay bounded: no trajectory id, token or made-up model name."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from jetty_cli.testing import TestStack, call, chat


def scrape(url: str) -> tuple[str, dict[str, list[tuple[str, dict[str, str], float]]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families = {
        f.name: [(s.name, s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }
    return text, families


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def health_url(stack: TestStack, service: str) -> str:
    return f"http://127.0.0.1:{stack.config.health_ports[service]}"


def test_every_service_serves_metrics_with_bounded_labels(stack: TestStack) -> None:
    ids = []
    for text in ("one", "two"):
        status, headers, _ = chat(stack.base_url, stack.token, text)
        assert status == 200
        ids.append(headers["X-Jetty-Trajectory-Id"])
    status, _, _ = call(
        stack.base_url + "/v1/chat/completions",
        stack.token,
        {"model": "no-such-model-xyz", "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 404
    text, gateway = scrape(stack.base_url + "/metrics")
    requests = gateway["jetty_gateway_requests"]
    assert (
        value(
            requests,
            "jetty_gateway_requests_total",
            route="/v1/chat/completions",
            status="200",
            ingress="chat.completions",
        )
        >= 2
    )
    assert value(requests, "jetty_gateway_requests_total", status="404") >= 1
    duration = gateway["jetty_gateway_request_duration_seconds"]
    assert value(duration, "jetty_gateway_request_duration_seconds_count") >= 3

    proxy_text, proxy = scrape(health_url(stack, "proxy") + "/metrics")
    calls = proxy["jetty_model_calls"]
    assert (
        value(
            calls, "jetty_model_calls_total", provider="mock", model="mock/echo", status="finished"
        )
        >= 2
    )
    assert value(calls, "jetty_model_calls_total", provider="none", model="unknown") >= 1
    assert value(proxy["jetty_tokens"], "jetty_tokens_total", provider="mock") > 0
    assert (
        value(
            proxy["jetty_nats_publish_duration_seconds"],
            "jetty_nats_publish_duration_seconds_count",
        )
        >= 3
    )
    assert "jetty_time_to_first_token_seconds" in proxy
    assert "jetty_nats_pending_acks" in proxy

    _, recorder = scrape(health_url(stack, "recorder") + "/metrics")
    assert "jetty_recorder_lag_events" in recorder
    assert "jetty_recorder_batch_commit_duration_seconds" in recorder
    _, runner = scrape(health_url(stack, "runner") + "/metrics")
    assert {"jetty_runbook_queue_depth", "jetty_runbook_active_runs"} <= set(runner)

    for body in (text, proxy_text):
        assert stack.token not in body and "no-such-model-xyz" not in body
        assert not any(tid in body for tid in ids)
