-- The console's list filters, each served by an index that keeps the list's order
-- (newest first), so a filtered page reads only its rows: mode (passthrough or
-- runbook) beside the existing task/status/model ones, and a runbook's agent.
CREATE INDEX IF NOT EXISTS trajectories_collection_mode_created
    ON trajectories (collection, mode, created_at DESC, trajectory_id DESC);
CREATE INDEX IF NOT EXISTS runbooks_collection_agent
    ON runbooks (collection, agent, trajectory_id);
