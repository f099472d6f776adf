-- Schema 4: groups. Streamer replicas form one group, and the instances of one logical
-- consumer another; each member renews its row while it lives. Partitions are shared out
-- among a group's live members (see `membership.rs`), each partition owned by lease.
CREATE TABLE log_members (
    group_name TEXT NOT NULL,
    member     TEXT NOT NULL,
    seen_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_name, member)
);
