-- ORG-13: what remains of an organization that ORG-10 deleted automatically,
-- so that GetOrganization and its history can still say why, to the admins
-- of its former member accounts, until purge_time (the retention period,
-- ORGMESH_ORG_TOMBSTONE_RETENTION_S, default 90 days, timed by the database
-- clock). The purge loop deletes rows past purge_time. Expand-only.
CREATE TABLE org_tombstones (
  organization_id uuid PRIMARY KEY,
  founding_hub_id bigint NOT NULL,
  hosting_location text NOT NULL,
  created_by bigint NOT NULL,
  version bigint NOT NULL,
  create_time timestamptz NOT NULL,
  delete_time timestamptz NOT NULL DEFAULT now(),
  deletion_reason int NOT NULL,
  former_member_hub_ids bigint[] NOT NULL,
  purge_time timestamptz NOT NULL);
CREATE INDEX org_tombstones_purge ON org_tombstones (purge_time);
