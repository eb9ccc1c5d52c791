-- API keys as the key.* events describe them (shared/keys.py): the public view of
-- each key, never its secret or hash. Each event carries the whole key with a
-- version bumped by every change; the row keeps the highest version, so any
-- arrival order gives the same row.
CREATE TABLE api_keys (
    key_id          text PRIMARY KEY,
    collection      text NOT NULL,
    name            text NOT NULL,
    scopes          jsonb NOT NULL,
    expires_at      timestamptz,
    allowed_models  jsonb,
    limits          jsonb NOT NULL,
    budget          jsonb,
    metadata        jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    rotated_at      timestamptz,
    version         integer NOT NULL,
    event_id        text NOT NULL
);
CREATE INDEX api_keys_collection ON api_keys (collection, created_at);
