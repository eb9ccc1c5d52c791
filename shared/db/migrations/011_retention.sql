-- Deletion and retention (docs/operations.md, "Data controls").

-- A deleted trajectory's tombstone: the projection skips every event of a
-- trajectory listed here, in any order and on any replay, so a deletion survives
-- a rebuild from the stream even if one of its events is still there.
CREATE TABLE deleted_trajectories (
    trajectory_id       text PRIMARY KEY,
    collection          text NOT NULL,
    deleted_at          timestamptz NOT NULL,
    event_id            text NOT NULL
);

-- Where each event is on the stream, so a deletion can remove the trajectory's
-- messages (and with them its bodies) from JetStream itself.
ALTER TABLE processed_events ADD COLUMN stream_seq bigint;
CREATE INDEX processed_events_trajectory ON processed_events (trajectory_id);

-- The retention sweeper walks trajectories oldest first.
CREATE INDEX trajectories_created ON trajectories (created_at);
