-- One shape of membership_copies in organizations, connections and assets
-- (issue 16, common/copies.h copies_membership_put): hub_id, user_id,
-- roles and seats as bits (bit = value - 1), deleted, version, update_time.
-- Expand-only: two columns with defaults, so a replica of the previous
-- version, which inserts without them, keeps working during a rolling
-- upgrade.
ALTER TABLE membership_copies ADD COLUMN seats int NOT NULL DEFAULT 0;
ALTER TABLE membership_copies ADD COLUMN update_time timestamptz NOT NULL DEFAULT now();
