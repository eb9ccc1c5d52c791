-- The trajectory projection. Every row here is a pure function of the events in the
-- JETTY_EVENTS stream: no column is filled from the wall clock (no now(), no
-- defaults from it), so replaying the stream into an empty database gives
-- byte-identical tables. See services/recorder/README.md.

-- Precedence of statuses when two facts about the same step disagree: a terminal
-- status always beats pending/running; among terminal ones the "worst news" wins so
-- an error is never hidden by a late success. Must stay IMMUTABLE: it is used in
-- upserts whose outcome must not depend on the order events arrive in.
CREATE FUNCTION jetty_status_rank(status text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$
        SELECT CASE status
            WHEN 'pending' THEN 0
            WHEN 'running' THEN 1
            WHEN 'completed' THEN 2
            WHEN 'cancelled' THEN 3
            WHEN 'failed' THEN 4
        END
    $$;

CREATE TABLE trajectories (
    trajectory_id       text PRIMARY KEY,
    collection          text NOT NULL,
    task                text NOT NULL,
    mode                text NOT NULL,
    status              text NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    model               text,
    created_at          timestamptz NOT NULL,
    completed_at        timestamptz,
    latency_ms          double precision,
    ttft_ms             double precision,
    prompt_tokens       bigint,
    completion_tokens   bigint,
    total_tokens        bigint,
    error               jsonb
);

-- The query API lists one collection newest first, optionally filtered by one of
-- task / status / model, with keyset pagination on (created_at, trajectory_id).
-- Each index matches one filter so a page is an index range scan whatever the
-- table size.
CREATE INDEX trajectories_collection_created
    ON trajectories (collection, created_at DESC, trajectory_id DESC);
CREATE INDEX trajectories_collection_task_created
    ON trajectories (collection, task, created_at DESC, trajectory_id DESC);
CREATE INDEX trajectories_collection_status_created
    ON trajectories (collection, status, created_at DESC, trajectory_id DESC);
CREATE INDEX trajectories_collection_model_created
    ON trajectories (collection, model, created_at DESC, trajectory_id DESC);

-- One row per step of a trajectory. A step is built from a request-side event
-- (completion.requested) and an end-side event (finished / failed / cancelled)
-- that may arrive in either order; *_event_id say which event each side came from
-- so that the merge is a deterministic choice, not "last writer wins".
CREATE TABLE steps (
    trajectory_id       text NOT NULL,
    step_index          integer NOT NULL,
    collection          text NOT NULL,
    task                text NOT NULL,
    mode                text NOT NULL,
    kind                text NOT NULL,
    status              text NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    provider            text,
    model               text,
    stream              boolean,
    ingress             text,
    request             jsonb,
    response            jsonb,
    usage               jsonb,
    latency_ms          double precision,
    ttft_ms             double precision,
    started_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    error               jsonb,
    request_event_id    text,
    end_event_id        text,
    PRIMARY KEY (trajectory_id, step_index)
);

-- The projection's tracking table: written in the same transaction as the state
-- change, so an event already seen changes nothing (exactly-once effect on top of
-- JetStream's at-least-once delivery).
CREATE TABLE processed_events (
    event_id            text PRIMARY KEY,
    event_type          text NOT NULL,
    trajectory_id       text NOT NULL,
    event_time          timestamptz NOT NULL
);

-- Messages that can never be projected (unparseable, unknown type, data the
-- database refuses). Recorded so they do not block the stream and can be
-- inspected or re-driven; keyed by stream sequence, which replay reproduces.
CREATE TABLE dead_events (
    stream_seq          bigint PRIMARY KEY,
    subject             text NOT NULL,
    event_id            text,
    event_type          text,
    trajectory_id       text,
    collection          text,
    payload             bytea NOT NULL,
    error               text NOT NULL
);
