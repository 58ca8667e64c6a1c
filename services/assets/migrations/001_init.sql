-- The assets service's schema (SPEC 5): marketing assets per account with
-- their typed references, copy jobs and their per-asset items (which are also
-- the source -> copy mapping of a job), and the versioned local copy of
-- memberships (SPEC 2) that ASSET-01/02 authorise against.

-- type: AssetType values; name unique per account and type ignoring case
-- (ASSET-01). Provenance columns are set on copies only (ASSET-05).
CREATE TABLE assets (
  asset_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  hub_id bigint NOT NULL CHECK (hub_id > 0),
  type int NOT NULL CHECK (type BETWEEN 1 AND 4),
  name text NOT NULL,
  body text NOT NULL,
  source_hub_id bigint,
  source_asset_id uuid,
  job_id uuid,
  version bigint NOT NULL DEFAULT 1,
  create_time timestamptz NOT NULL DEFAULT now(),
  update_time timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX assets_name ON assets (hub_id, type, lower(name));
-- ASSET-06: a job makes at most one copy of each source asset.
CREATE UNIQUE INDEX assets_copy_once ON assets (job_id, source_asset_id) WHERE job_id IS NOT NULL;

-- References kept outside the body (ASSET-01), in the order given. A
-- referenced asset cannot be deleted while referenced (ASSET_IN_USE).
CREATE TABLE asset_refs (
  asset_id uuid NOT NULL REFERENCES assets ON DELETE CASCADE,
  pos int NOT NULL,
  ref_id uuid NOT NULL REFERENCES assets,
  ref_type int NOT NULL,
  PRIMARY KEY (asset_id, pos));
CREATE INDEX asset_refs_ref ON asset_refs (ref_id);

-- roles: bit (Role value - 1). Fed by accounts events, filled on demand.
CREATE TABLE membership_copies (
  hub_id bigint NOT NULL CHECK (hub_id > 0),
  user_id bigint NOT NULL CHECK (user_id > 0),
  roles int NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  PRIMARY KEY (hub_id, user_id));

-- Copy jobs (ASSET-02/03). state: CopyJobState values; policy:
-- ConflictPolicy. A worker owns a job while lease_until (database clock) is
-- in the future (ASSET-06).
CREATE TABLE copy_jobs (
  job_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  source_hub_id bigint NOT NULL,
  target_hub_id bigint NOT NULL,
  include_dependencies boolean NOT NULL,
  policy int NOT NULL,
  state int NOT NULL DEFAULT 1,
  total int NOT NULL,
  done int NOT NULL DEFAULT 0,
  copied int NOT NULL DEFAULT 0,
  skipped int NOT NULL DEFAULT 0,
  failed int NOT NULL DEFAULT 0,
  failure_reason text NOT NULL DEFAULT '',
  created_by bigint NOT NULL,
  version bigint NOT NULL DEFAULT 1,
  lease_owner text,
  lease_until timestamptz,
  create_time timestamptz NOT NULL DEFAULT now(),
  start_time timestamptz,
  end_time timestamptz,
  update_time timestamptz NOT NULL DEFAULT now());
CREATE INDEX copy_jobs_open ON copy_jobs (create_time) WHERE state IN (1, 2);
CREATE INDEX copy_jobs_source ON copy_jobs (source_hub_id, create_time DESC);
CREATE INDEX copy_jobs_target ON copy_jobs (target_hub_id, create_time DESC);

-- One row per asset of a job, in copy order (seq): rank orders forms before
-- lists before emails, so that a dependency is always copied before the
-- assets that reference it. outcome: CopyOutcome values.
CREATE TABLE copy_items (
  job_id uuid NOT NULL REFERENCES copy_jobs ON DELETE CASCADE,
  seq int NOT NULL,
  source_asset_id uuid NOT NULL,
  type int NOT NULL,
  rank int NOT NULL,
  source_name text NOT NULL,
  dependency boolean NOT NULL,
  outcome int NOT NULL DEFAULT 1,
  new_asset_id uuid,
  new_name text,
  error_reason text,
  error_message text,
  finish_time timestamptz,
  PRIMARY KEY (job_id, seq),
  UNIQUE (job_id, source_asset_id));
CREATE INDEX copy_items_pending ON copy_items (job_id, seq) WHERE outcome = 1;
