-- What each step and each trajectory cost, in US dollars (see docs/pricing.md).
-- NULL means unknown (an unpriced model, the mock provider, no usage yet), never 0.
-- Scale 10 is the pricing quantum (1e-10 USD): every value is stored with the same
-- scale whatever text the event carried, so a replay gives byte-identical rows.
-- Filled by the projection from the events only; nothing here reads the clock.
ALTER TABLE steps ADD COLUMN cost_usd numeric(30, 10);
ALTER TABLE trajectories ADD COLUMN cost_usd numeric(30, 10);
