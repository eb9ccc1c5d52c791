-- Runbook trajectories (docs/events.md, "Runbook events"). Like every table of the
-- projection, a pure function of the events: no column is filled from the clock.

-- The agent's own steps (message / tool_call / tool_result) live in `steps` beside
-- the model calls; what only they have (text, tool name, call id, input, is_error)
-- goes here. NULL for completion steps.
ALTER TABLE steps ADD COLUMN detail jsonb;

-- One row per runbook, merged from three sides that may arrive in any order:
-- the request (runbook.requested), the start (runbook.started) and the end
-- (runbook.completed / failed / cancelled). *_event_id say which event each side
-- came from, so a merge is a fixed choice: among requested events the smaller id,
-- among started events the later started_at then the larger id (a resumed run's
-- latest sandbox), among end events jetty_status_rank, then ended_at, then id.
-- collection and task come from the request side, else from the smallest event id
-- seen (identity_event_id).
CREATE TABLE runbooks (
    trajectory_id       text PRIMARY KEY,
    collection          text NOT NULL,
    task                text NOT NULL,
    identity_event_id   text NOT NULL,
    -- request side
    agent               text,
    model               text,
    runbook             text,
    prompt              text,
    file_paths          jsonb,
    budget              jsonb,
    timeout_s           double precision,
    request             jsonb,
    requested_at        timestamptz,
    requested_event_id  text,
    -- start side
    started_at          timestamptz,
    runner              text,
    backend             text,
    sandbox_id          text,
    started_event_id    text,
    -- end side
    end_status          text
        CHECK (end_status IN ('completed', 'failed', 'cancelled')),
    ended_at            timestamptz,
    agent_started_at    timestamptz,
    outcome             jsonb,
    error               jsonb,
    cancel_reason       text,
    end_event_id        text,
    -- A terminal event wins over pending/running whatever the arrival order.
    status              text NOT NULL GENERATED ALWAYS AS (
        coalesce(end_status,
                 CASE WHEN started_event_id IS NOT NULL THEN 'running' ELSE 'pending' END)
    ) STORED
);

-- Files a run left, one row per workspace path. The same path stored twice keeps
-- the later stored_at, then the larger event id.
CREATE TABLE artifacts (
    trajectory_id       text NOT NULL,
    path                text NOT NULL,
    collection          text NOT NULL,
    task                text NOT NULL,
    key                 text NOT NULL,
    size                bigint NOT NULL,
    sha256              text NOT NULL,
    content_type        text NOT NULL,
    stored_at           timestamptz NOT NULL,
    event_id            text NOT NULL,
    PRIMARY KEY (trajectory_id, path)
);
