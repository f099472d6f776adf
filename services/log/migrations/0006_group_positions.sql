-- Schema 6: every reader's position in one table. A Redis consumer group (the history, any
-- future group) keeps a row per partition beside the checkpointed consumers: `last_seq` is the
-- seq up to which everything is done (projected and acknowledged), `updated_at` the group's
-- last sign of life. Trimming, archive pruning, `republish` and expiry read every row alike, so
-- a group holds the stream and the archive back as a checkpointed consumer does, and a group
-- that Redis lost resumes from here instead of from whatever Redis says. A group's row carries
-- no totals: those columns stay 0.
ALTER TABLE consumer_positions
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'checkpoint' CHECK (kind IN ('checkpoint', 'group'));

-- `consumers` stays the checkpointed consumers' totals.
CREATE OR REPLACE VIEW consumers AS
SELECT stream, name, sum(total_distance) AS total_distance, sum(ride_count)::bigint AS ride_count,
       max(updated_at) AS updated_at
FROM consumer_positions WHERE kind = 'checkpoint' GROUP BY stream, name;
