-- Schema 5: the ride history, a read model that `rocket-rides-history` projects from the log
-- through a Redis consumer group. One row per ride, written by an idempotent upsert, so an
-- entry delivered twice (a claim after a crash, a replay after Redis lost the group) changes
-- nothing. Where the ride sits in the log is kept with it; a republished record of a later
-- epoch moves it there.
CREATE TABLE ride_history (
    ride_id     BIGINT PRIMARY KEY,
    rider_id    TEXT,
    distance    NUMERIC NOT NULL,
    partition   INT NOT NULL,
    seq         BIGINT NOT NULL,
    epoch       BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- ListRides: a rider's rides, newest first, by keyset.
CREATE INDEX ride_history_by_rider ON ride_history (rider_id, ride_id DESC);
