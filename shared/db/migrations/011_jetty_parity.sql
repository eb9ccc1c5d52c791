-- Jetty parity (docs/jetty-parity.md). Like every table of the projection, a pure
-- function of the events.

-- What the request side of a runbook carries beyond 003: primary_outputs,
-- agent_source, runbook_path, inputs (files API). Same precedence as the request.
ALTER TABLE runbooks ADD COLUMN extra jsonb;

-- Labels (label.set / label.removed): one row per (trajectory, key); the later
-- event (at, then event id) wins, so a removal is a row with removed = true.
CREATE TABLE labels (
    trajectory_id   text NOT NULL,
    key             text NOT NULL,
    collection      text NOT NULL,
    value           text NOT NULL,
    author          text,
    at              timestamptz NOT NULL,
    removed         boolean NOT NULL,
    event_id        text NOT NULL,
    PRIMARY KEY (trajectory_id, key)
);
CREATE INDEX labels_filter ON labels (collection, key, value) WHERE NOT removed;

-- Archiving (trajectory.archived / trajectory.unarchived): the later event wins.
CREATE TABLE archives (
    trajectory_id   text PRIMARY KEY,
    collection      text NOT NULL,
    archived        boolean NOT NULL,
    at              timestamptz NOT NULL,
    event_id        text NOT NULL
);

-- Evaluation rounds (runbook.evaluated): one row per (trajectory, round); the
-- smaller event id wins if two claim one round.
CREATE TABLE evaluations (
    trajectory_id   text NOT NULL,
    round           integer NOT NULL,
    collection      text NOT NULL,
    passed          boolean NOT NULL,
    will_retry      boolean NOT NULL,
    checks          jsonb NOT NULL,
    evaluated_at    timestamptz NOT NULL,
    event_id        text NOT NULL,
    PRIMARY KEY (trajectory_id, round)
);
