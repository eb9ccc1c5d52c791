"""The pricing table and the cost arithmetic.

Every expected cost below is worked by hand in the comments from the table's
own numbers (USD per 1M tokens) and written as a literal Decimal. No network,
no services: only the shipped TOML and small tables parsed from strings.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.proxy.pricing import (
    COST_QUANTUM,
    DEFAULT_PRICING_PATH,
    PricingError,
    PricingTable,
    UsageCounts,
    cost_for,
    cost_usd,
    load_pricing,
    parse_pricing,
    price_for,
    sum_costs,
    sum_known_costs,
)

DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "pricing.md"

LITELLM = "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json"
HEADER = """
schema_version = 1
table_date = 2026-11-26
currency = "USD"
unit = "per_1m_tokens"
"""


def table(models: str, header: str = HEADER) -> PricingTable:
    return parse_pricing(header + models)


def entry(**fields: Any) -> str:
    """One [[model]] table; defaults make a valid entry."""
    values: dict[str, Any] = {
        "id": "m",
        "provider": "p",
        "input": "1",
        "output": "2",
        "effective_date": "2026-01-01",
        "source": LITELLM,
    } | fields
    lines = ["[[model]]"]
    for key, value in values.items():
        if value is None:
            continue
        if key == "effective_date" or isinstance(value, int | list):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        elif key in {"input", "output", "cached_input", "cache_write", "reasoning"}:
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def usage(prompt: int, completion: int, **kw: int) -> UsageCounts:
    return UsageCounts(prompt_tokens=prompt, completion_tokens=completion, **kw)


# ── arithmetic against the shipped table ─────────────────────────────────────


def test_gpt_4o_cached_prompt() -> None:
    # gpt-4o: input 2.50, cached_input 1.25, output 10.00.
    # 1,000,000 prompt of which 200,000 cached, 500,000 completion:
    #   800,000 uncached * 2.50/1M = 2.00
    #   200,000 cached   * 1.25/1M = 0.25
    #   500,000 output   * 10.00/1M = 5.00          total 7.25
    cost = cost_for("openai", "gpt-4o", usage(1_000_000, 500_000, cached_tokens=200_000))
    assert cost == Decimal("7.25")
    assert cost is not None and cost.as_tuple().exponent == -10  # rounded to 1e-10


def test_dated_snapshot_and_routing_form_price_the_same() -> None:
    u = usage(1_000_000, 500_000, cached_tokens=200_000)
    for provider, model in [
        ("openai", "gpt-4o-2024-08-06"),
        ("openai", "gpt-4o-2024-11-20"),
        ("openai", "openai/gpt-4o"),
        ("", "openai/gpt-4o"),
        ("OpenAI", "gpt-4o"),
    ]:
        assert cost_for(provider, model, u) == Decimal("7.25"), (provider, model)


def test_gpt_4o_first_snapshot_has_its_own_price_and_no_cache_price() -> None:
    # gpt-4o-2024-05-13: input 5.00, output 15.00, no cached-input price.
    #   1,000 * 5.00/1M = 0.005;  1,000 * 15.00/1M = 0.015      total 0.02
    price = price_for("openai", "gpt-4o-2024-05-13")
    assert price is not None and price.id == "gpt-4o-2024-05-13"
    assert cost_usd(price, usage(1_000, 1_000)) == Decimal("0.02")
    # Cached tokens on a model without a cached price: unknown, not free.
    assert cost_usd(price, usage(1_000, 1_000, cached_tokens=1)) is None


def test_anthropic_cache_reads_and_writes() -> None:
    # claude-sonnet-4-5: input 3.00, cached 0.30, 5m write 3.75, 1h write 6.00, output 15.00.
    # prompt 150,000 = 10,000 uncached + 100,000 read + 40,000 written (10,000 of them 1h):
    #   10,000 * 3.00/1M = 0.03
    #  100,000 * 0.30/1M = 0.03
    #   30,000 * 3.75/1M = 0.1125   (5-minute writes: 40,000 - 10,000)
    #   10,000 * 6.00/1M = 0.06
    #    2,000 * 15.00/1M = 0.03                                  total 0.2625
    u = usage(
        150_000,
        2_000,
        cached_tokens=100_000,
        cache_write_tokens=40_000,
        cache_write_1h_tokens=10_000,
    )
    assert cost_for("anthropic", "claude-sonnet-4-5", u) == Decimal("0.2625")
    assert cost_for("anthropic", "claude-sonnet-4-5-20250929", u) == Decimal("0.2625")


def test_cache_write_without_a_write_price_is_unknown() -> None:
    # OpenAI lists no cache-write price; a reported write cannot be priced.
    assert cost_for("openai", "gpt-4.1", usage(10, 0, cache_write_tokens=5)) is None
    # With no write tokens the same call is priced: 10 * 2.00/1M = 0.00002
    assert cost_for("openai", "gpt-4.1", usage(10, 0)) == Decimal("0.00002")


def test_opus_4_5_cache_write() -> None:
    # claude-opus-4-5: input 5.00, 5m write 6.25, output 25.00.
    #   100,000 written * 6.25/1M = 0.625
    #    20,000 uncached * 5.00/1M = 0.10
    #     4,000 output * 25.00/1M = 0.10                          total 0.825
    u = usage(120_000, 4_000, cache_write_tokens=100_000)
    assert cost_for("anthropic", "claude-opus-4-5", u) == Decimal("0.825")


def test_reasoning_tokens_default_to_the_output_price() -> None:
    # o3: input 2.00, output 8.00, no reasoning price.
    #   10,000 * 2.00/1M = 0.02;  5,000 completion (4,000 reasoning) * 8.00/1M = 0.04   total 0.06
    assert cost_for("openai", "o3", usage(10_000, 5_000, reasoning_tokens=4_000)) == Decimal("0.06")
    assert cost_for("openai", "o3", usage(10_000, 5_000)) == Decimal("0.06")


def test_reasoning_priced_apart_from_output() -> None:
    t = table(entry(input="1.00", output="2.00", reasoning="3.50"))
    # 1,000,000 prompt * 1.00/1M = 1.00
    #   600,000 visible completion * 2.00/1M = 1.20
    #   400,000 reasoning * 3.50/1M = 1.40                         total 3.60
    u = usage(1_000_000, 1_000_000, reasoning_tokens=400_000)
    assert cost_usd(t.lookup("p", "m"), u) == Decimal("3.60")


def test_gemini_2_5_pro_long_prompt_tier() -> None:
    # gemini-2.5-pro base: input 1.25, cached 0.125, output 10.00
    #                >200K: input 2.50, cached 0.25,  output 15.00 (whole call)
    # 300,000 prompt (100,000 cached), 20,000 completion (15,000 thinking):
    #   200,000 * 2.50/1M = 0.50
    #   100,000 * 0.25/1M = 0.025
    #    20,000 * 15.00/1M = 0.30                                  total 0.825
    u = usage(300_000, 20_000, cached_tokens=100_000, reasoning_tokens=15_000)
    assert cost_for("gemini", "gemini-2.5-pro", u) == Decimal("0.825")
    # Same model, short prompt: 100,000 * 1.25/1M = 0.125; 1,000 * 10/1M = 0.01   total 0.135
    assert cost_for("gemini", "gemini-2.5-pro", usage(100_000, 1_000)) == Decimal("0.135")
    # "google" bills like "gemini".
    assert cost_for("google", "gemini-2.5-pro", usage(100_000, 1_000)) == Decimal("0.135")


def test_tier_boundary_is_strictly_above() -> None:
    # claude-sonnet-4 tier starts above 200,000 prompt tokens.
    #   200,000 * 3.00/1M = 0.60 (base)
    #   200,001 * 6.00/1M = 1.200006 (every token at the long-context rate)
    assert cost_for("anthropic", "claude-sonnet-4-0", usage(200_000, 0)) == Decimal("0.60")
    assert cost_for("anthropic", "claude-sonnet-4-0", usage(200_001, 0)) == Decimal("1.200006")


def test_sonnet_long_context_tier_with_cache() -> None:
    # claude-sonnet-4-5 >200K: input 6.00, cached 0.60, 5m write 7.50, output 22.50.
    # 250,000 prompt = 150,000 uncached + 50,000 read + 50,000 written; 10,000 completion:
    #   150,000 * 6.00/1M = 0.90
    #    50,000 * 0.60/1M = 0.03
    #    50,000 * 7.50/1M = 0.375
    #    10,000 * 22.50/1M = 0.225                                 total 1.53
    u = usage(250_000, 10_000, cached_tokens=50_000, cache_write_tokens=50_000)
    assert cost_for("anthropic", "claude-sonnet-4-5", u) == Decimal("1.53")


def test_several_tiers_pick_the_highest_threshold_passed() -> None:
    t = table(
        entry(input="1", output="1")
        + "[[model.tiers]]\nabove_prompt_tokens = 100\ninput = 2\noutput = 2\n"
        + "[[model.tiers]]\nabove_prompt_tokens = 1000\ninput = 4\noutput = 4\n"
    )
    price = t.lookup("p", "m")
    # 100 * 1/1M, 101 * 2/1M, 1,001 * 4/1M
    assert cost_usd(price, usage(100, 0)) == Decimal("0.0001")
    assert cost_usd(price, usage(101, 0)) == Decimal("0.000202")
    assert cost_usd(price, usage(1_001, 0)) == Decimal("0.004004")


def test_a_tier_without_a_cached_price_does_not_fall_back_to_the_base_price() -> None:
    t = table(
        entry(input="1", output="1", cached_input="0.1")
        + "[[model.tiers]]\nabove_prompt_tokens = 100\ninput = 2\noutput = 2\n"
    )
    price = t.lookup("p", "m")
    assert cost_usd(price, usage(50, 0, cached_tokens=10)) is not None
    assert cost_usd(price, usage(500, 0, cached_tokens=10)) is None


def test_prompt_above_max_prompt_tokens_is_unknown() -> None:
    # gpt-5.4 is priced only up to 272,000 prompt tokens: 272,000 * 2.50/1M = 0.68
    assert cost_for("openai", "gpt-5.4", usage(272_000, 0)) == Decimal("0.68")
    assert cost_for("openai", "gpt-5.4", usage(272_001, 0)) is None


def test_rounding_is_half_even_at_1e_10() -> None:
    # gemini-2.0-flash-lite cached_input 0.01875.
    #   7 cached * 0.01875/1M = 0.00000013125 -> 0.0000001312 (tie, 2 is even)
    #   9 cached * 0.01875/1M = 0.00000016875 -> 0.0000001688 (tie, 7 is odd)
    assert Decimal("1E-10") == COST_QUANTUM
    assert cost_for("gemini", "gemini-2.0-flash-lite", usage(7, 0, cached_tokens=7)) == Decimal(
        "0.0000001312"
    )
    assert cost_for("gemini", "gemini-2.0-flash-lite", usage(9, 0, cached_tokens=9)) == Decimal(
        "0.0000001688"
    )
    # One gpt-5-nano prompt token: 0.05/1M = 0.00000005, exactly representable.
    assert cost_for("openai", "gpt-5-nano", usage(1, 0)) == Decimal("0.0000000500")


def test_exact_decimal_arithmetic_no_float_drift() -> None:
    # 3 calls of gpt-4.1-mini, 1 prompt token each: 3 * 0.40/1M = 0.0000012 exactly
    one = cost_for("openai", "gpt-4.1-mini", usage(1, 0))
    assert one == Decimal("0.0000004")
    assert sum_costs([one, one, one]) == Decimal("0.0000012")


def test_zero_usage_costs_zero_when_the_price_is_known() -> None:
    assert cost_for("deepseek", "deepseek-chat", usage(0, 0)) == Decimal("0")


def test_deepseek_cache_hit() -> None:
    # deepseek-reasoner: miss 0.28, hit 0.028, output 0.42.
    #   600,000 * 0.28/1M = 0.168;  400,000 * 0.028/1M = 0.0112;  100,000 * 0.42/1M = 0.042
    #                                                               total 0.2212
    u = usage(1_000_000, 100_000, cached_tokens=400_000, reasoning_tokens=90_000)
    assert cost_for("deepseek", "deepseek-reasoner", u) == Decimal("0.2212")


# ── unknown prices ───────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-9"),
        ("openai", "GPT-4o"),  # ids are exact
        ("openai", "gpt-4o-2099-01-01"),  # no fuzzy snapshot matching
        ("openai", "gpt-4o "),
        ("nobody", "gpt-4o"),
        ("openrouter", "openai/gpt-4o"),  # resellers bill differently
        ("azure", "gpt-4o"),
        ("anthropic", "openai/gpt-4o"),  # routing prefix must match the provider
        ("", "gpt-4o"),  # no provider at all
        ("mistral", "mistral-large-latest"),  # moving pointers are not priced
        ("mistral", "mistral-small-latest"),  # sources disagree: left out
        ("cohere", "command-r"),  # undated alias: left out
    ],
)
def test_unknown_model_has_no_price(provider: str, model: str) -> None:
    assert price_for(provider, model) is None
    assert cost_for(provider, model, usage(1_000, 1_000)) is None


def test_cost_of_unknown_price_is_none_not_zero() -> None:
    assert cost_usd(None, usage(0, 0)) is None


def test_unpriced_token_kind_makes_the_cost_unknown() -> None:
    # Mistral entries carry no cached price.
    assert cost_for("mistral", "codestral-2508", usage(100, 10)) == Decimal("0.000039")
    assert cost_for("mistral", "codestral-2508", usage(100, 10, cached_tokens=50)) is None


# ── trajectory sums ──────────────────────────────────────────────────────────


def test_sum_costs() -> None:
    assert sum_costs([Decimal("0.1"), Decimal("0.2")]) == Decimal("0.3")
    assert sum_costs([]) == Decimal("0")
    assert sum_costs([Decimal("0.1"), None, Decimal("0.2")]) is None
    assert sum_costs(iter([None])) is None


def test_trajectory_with_an_unpriced_step_is_null() -> None:
    steps = [
        cost_for("openai", "gpt-4o", usage(1_000_000, 500_000, cached_tokens=200_000)),  # 7.25
        cost_for("anthropic", "claude-haiku-4-5", usage(1_000_000, 0)),  # 1.00
        cost_for("openai", "gpt-unknown", usage(1, 1)),  # None
    ]
    assert sum_costs(steps[:2]) == Decimal("8.25")
    assert sum_costs(steps) is None
    assert sum_known_costs(steps) == (Decimal("8.25"), 1)


# ── usage validation ─────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt_tokens": -1, "completion_tokens": 0},
        {"prompt_tokens": 10, "completion_tokens": 0, "cached_tokens": 11},
        {"prompt_tokens": 10, "completion_tokens": 0, "cached_tokens": 6, "cache_write_tokens": 5},
        {"prompt_tokens": 0, "completion_tokens": 5, "reasoning_tokens": 6},
        {"prompt_tokens": 10, "completion_tokens": 0, "cache_write_1h_tokens": 1},
        {"prompt_tokens": 1.0, "completion_tokens": 0},
        {"prompt_tokens": True, "completion_tokens": 0},
    ],
)
def test_inconsistent_usage_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        UsageCounts(**kwargs)


# ── the data file ────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def shipped() -> PricingTable:
    return load_pricing()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with DEFAULT_PRICING_PATH.open("rb") as fh:
        return tomllib.load(fh)


def test_load_is_cached(shipped: PricingTable) -> None:
    assert load_pricing() is shipped
    assert load_pricing(DEFAULT_PRICING_PATH) is shipped


def test_every_entry_has_source_and_date(raw: dict[str, Any], shipped: PricingTable) -> None:
    for item in raw["model"]:
        assert "source" in item and "effective_date" in item, item["id"]
    for m in shipped.models:
        assert m.source.startswith("https://"), m.id
        assert m.effective_date <= shipped.table_date, m.id


def test_prices_are_exact_positive_decimals(shipped: PricingTable) -> None:
    for m in shipped.models:
        for rates in (m, *m.tiers):
            for field in ("input", "output", "cached_input", "cache_write", "cache_write_1h"):
                value = getattr(rates, field)
                if value is None:
                    continue
                assert isinstance(value, Decimal), (m.id, field)
                if field == "output" and "embed" in m.id:
                    # Embedding models produce no output tokens: 0 is the truth there.
                    assert value == 0, m.id
                    continue
                # A known price of 0 would be indistinguishable from "free"; none is.
                assert value > 0, (m.id, field)
            assert rates.reasoning is None or rates.reasoning > 0


def test_price_relations_are_sane(shipped: PricingTable) -> None:
    for m in shipped.models:
        if m.cached_input is not None:
            assert m.cached_input < m.input, m.id
        if m.cache_write is not None:
            assert m.cache_write >= m.input, m.id
        for tier in m.tiers:
            assert tier.input >= m.input and tier.output >= m.output, m.id


def test_no_duplicate_ids_or_aliases(shipped: PricingTable) -> None:
    seen: set[tuple[str, str]] = set()
    for m in shipped.models:
        for name in m.names:
            assert (m.provider, name) not in seen, (m.provider, name)
            seen.add((m.provider, name))
    assert set(shipped.as_mapping()) == seen


def test_model_ids_are_exact_strings(shipped: PricingTable) -> None:
    for m in shipped.models:
        for name in m.names:
            assert "*" not in name and name == name.strip(), name


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1"),
        ("openai", "gpt-4.1-mini"),
        ("openai", "gpt-4.1-nano"),
        ("openai", "o1"),
        ("openai", "o3"),
        ("openai", "o3-mini"),
        ("openai", "o4-mini"),
        ("openai", "gpt-5"),
        ("openai", "gpt-5-mini"),
        ("openai", "gpt-5-nano"),
        ("anthropic", "claude-opus-4-0"),
        ("anthropic", "claude-opus-4-1"),
        ("anthropic", "claude-opus-4-5"),
        ("anthropic", "claude-sonnet-4-0"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("gemini", "gemini-2.0-flash"),
        ("gemini", "gemini-2.0-flash-lite"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-flash-lite"),
        ("cohere", "command-a-03-2025"),
        ("cohere", "command-r-08-2024"),
        ("cohere", "command-r-plus-08-2024"),
        ("mistral", "mistral-large-2512"),
        ("mistral", "mistral-medium-2508"),
        ("mistral", "codestral-2508"),
        ("deepseek", "deepseek-chat"),
        ("deepseek", "deepseek-reasoner"),
        ("xai", "grok-4-1-fast-reasoning"),
        ("groq", "llama-3.3-70b-versatile"),
        ("groq", "llama-3.1-8b-instant"),
    ],
)
def test_required_coverage(provider: str, model: str) -> None:
    assert price_for(provider, model) is not None
    assert price_for("", f"{provider}/{model}") is not None


def test_gemini_2_5_pro_tier_is_in_the_table(shipped: PricingTable) -> None:
    price = shipped.lookup("gemini", "gemini-2.5-pro")
    assert price is not None
    (tier,) = price.tiers
    assert tier.above_prompt_tokens == 200_000
    assert (tier.input, tier.output, tier.cached_input) == (
        Decimal("2.50"),
        Decimal("15.00"),
        Decimal("0.25"),
    )


def test_docs_state_the_table_date(shipped: PricingTable) -> None:
    assert shipped.table_date.isoformat() in DOCS_PATH.read_text(encoding="utf-8")


# ── the loader rejects bad data ──────────────────────────────────────────────


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (entry(input="-1"), "non-negative"),
        (entry(output="nan"), "finite"),
        (entry(source=None), "source"),
        (entry(effective_date=None), "effective_date"),
        (entry(source="http://example.com/prices"), "https"),
        (entry(id="a b"), "whitespace"),
        (entry(provider="Open AI"), "provider"),
        (entry(aliases=["m"]), "alias"),
        (entry(aliases=["x", "x"]), "unique"),
        (entry(colour="red"), "colour"),
        (entry(id="a") + entry(id="b", aliases=["a"]), "listed twice"),
        (entry(id="a") + entry(id="a"), "listed twice"),
        (
            entry()
            + "[[model.tiers]]\nabove_prompt_tokens = 10\ninput = 1\noutput = 1\n"
            + "[[model.tiers]]\nabove_prompt_tokens = 10\ninput = 1\noutput = 1\n",
            "increasing",
        ),
        (
            entry(max_prompt_tokens=10)
            + "[[model.tiers]]\nabove_prompt_tokens = 10\ninput = 1\noutput = 1\n",
            "max_prompt_tokens",
        ),
        (entry(provider="google"), "alias"),
    ],
)
def test_bad_tables_are_rejected(models: str, message: str) -> None:
    header = HEADER + '[provider_aliases]\ngoogle = "gemini"\n'
    with pytest.raises(PricingError, match=message):
        table(models, header=header)


def test_bad_header_and_toml_are_rejected() -> None:
    with pytest.raises(PricingError, match="currency"):
        parse_pricing(HEADER.replace('"USD"', '"EUR"') + entry())
    with pytest.raises(PricingError, match="not valid TOML"):
        parse_pricing("model = [")
    with pytest.raises(PricingError, match="cannot read"):
        load_pricing(Path("/nonexistent/pricing.toml"))


def test_same_id_at_two_providers_is_allowed() -> None:
    t = table(entry(provider="a", input="1") + entry(provider="b", input="3"))
    assert cost_usd(t.lookup("a", "m"), usage(1_000_000, 0)) == Decimal("1")
    assert cost_usd(t.lookup("b", "m"), usage(1_000_000, 0)) == Decimal("3")
