-- The recorder's bookkeeping at one row per consumer instead of one per event
-- (docs/architecture.md, "Recorder"; services/recorder/projection.py).

-- Idempotence rests on the projected rows themselves: each keeps the id of the
-- event that wrote it and an upsert writes only when the incoming event strictly
-- beats the stored one, so an event applied again writes nothing. The row per
-- event that processed_events kept is not needed for that, and nothing else reads
-- it: dropping it leaves every projected row as it is and correct. (A recorder of
-- the previous version still running fails its next batch, which is retried and
-- never acked; the new recorder commits it. Nothing is lost.)
DROP TABLE processed_events;

-- One row per (consumer, stream): the highest stream sequence that consumer has
-- committed, written in the same transaction as the rows its batch projected.
-- JetStream may hand back an older message after a newer one was committed (a
-- NAKed claim check, a redelivery after a crash between commit and ack), so the
-- position is a high-water mark, for lag and operations, not a skip rule.
CREATE TABLE tracking_positions (
    consumer    text NOT NULL,
    stream      text NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (consumer, stream)
);

-- event_positions is read by trajectory only (a deletion lists the trajectory's
-- messages) and deduplicated on insert: one index on (trajectory_id, stream_seq)
-- does both, instead of a primary key on the event id plus an index on the
-- trajectory (two index entries per event). A stream sequence names one message,
-- so existing rows are unique on it; should a stream ever have been recreated
-- (sequences starting again) the same pair may repeat, and one row of it is kept.
DELETE FROM event_positions a USING event_positions b
WHERE a.trajectory_id = b.trajectory_id AND a.stream_seq = b.stream_seq
    AND a.event_id > b.event_id;
ALTER TABLE event_positions DROP CONSTRAINT event_positions_pkey;
DROP INDEX event_positions_trajectory;
ALTER TABLE event_positions ADD PRIMARY KEY (trajectory_id, stream_seq);
