-- The connections service's schema (SPEC 4): connections between the
-- accounts of an organization, and the versioned local copies (SPEC 2) of
-- what its rules read: org membership (organizations events), sensitivity
-- (accounts events) and users' roles and seats (accounts membership events).

-- Local copy of an organization. `version` is the organizations service's
-- aggregate version (an older snapshot never overwrites a newer one); a
-- deleted organization stays as a tombstone so that a late event cannot
-- bring it back. `config_version` counts this service's own configuration
-- changes (the ConnectionsChanged events' aggregate version). Writers lock
-- the row (FOR UPDATE), so configuration changes and the event handlers
-- that end or restrict connections serialise per organization.
CREATE TABLE orgs (
  organization_id uuid PRIMARY KEY,
  version bigint NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  config_version bigint NOT NULL DEFAULT 0,
  update_time timestamptz NOT NULL DEFAULT now());

CREATE TABLE org_members (
  organization_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
  hub_id bigint NOT NULL CHECK (hub_id > 0),
  PRIMARY KEY (organization_id, hub_id));
CREATE INDEX org_members_hub ON org_members (hub_id);

CREATE TABLE account_copies (
  hub_id bigint PRIMARY KEY CHECK (hub_id > 0),
  sensitive_data_enabled boolean NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  update_time timestamptz NOT NULL DEFAULT now());

-- roles: bit (Role value - 1); seats: bit (Seat value - 1).
CREATE TABLE membership_copies (
  hub_id bigint NOT NULL CHECK (hub_id > 0),
  user_id bigint NOT NULL CHECK (user_id > 0),
  roles int NOT NULL,
  seats int NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  update_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (hub_id, user_id));
CREATE INDEX membership_copies_user ON membership_copies (user_id);

-- CONN-01: one connection per pair (account_a < account_b); an account is in
-- one organization at a time and its connections end when it leaves
-- (CONN-09), so the pair is unique across organizations too. Directions are
-- the Direction enum values; *_source is the ONE_WAY source, else 0.
CREATE TABLE connections (
  connection_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  organization_id uuid NOT NULL,
  account_a bigint NOT NULL CHECK (account_a > 0),
  account_b bigint NOT NULL,
  mirroring int NOT NULL CHECK (mirroring BETWEEN 1 AND 3),
  mirroring_source bigint NOT NULL DEFAULT 0,
  asset_copying int NOT NULL CHECK (asset_copying BETWEEN 1 AND 3),
  asset_copying_source bigint NOT NULL DEFAULT 0,
  version bigint NOT NULL DEFAULT 1,
  create_time timestamptz NOT NULL DEFAULT now(),
  update_time timestamptz NOT NULL DEFAULT now(),
  CHECK (account_a < account_b),
  UNIQUE (account_a, account_b));
CREATE INDEX connections_org ON connections (organization_id, account_a, account_b);
CREATE INDEX connections_b ON connections (account_b);
