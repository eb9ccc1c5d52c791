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
-- messages (and with them its bodies) from JetStream itself. Written by the
-- recorder beside processed_events (not part of the projection: a direct
-- projection of the same events has no stream to point into).
CREATE TABLE event_positions (
    event_id            text PRIMARY KEY,
    trajectory_id       text NOT NULL,
    stream_seq          bigint NOT NULL
);
CREATE INDEX event_positions_trajectory ON event_positions (trajectory_id);

-- The retention sweeper walks trajectories oldest first.
CREATE INDEX trajectories_created ON trajectories (created_at);
