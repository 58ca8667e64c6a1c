-- The organizations service's schema (SPEC 3). Organizations and their
-- member accounts, the stored data-sharing acknowledgements (ORG-06), and the
-- versioned local copies of the accounts service's data the rules read
-- (SPEC 2), fed by its events and filled over gRPC when missing.

CREATE TABLE organizations (
  organization_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  founding_hub_id bigint NOT NULL CHECK (founding_hub_id > 0),
  hosting_location text NOT NULL,
  created_by bigint NOT NULL,
  version bigint NOT NULL DEFAULT 1,
  create_time timestamptz NOT NULL DEFAULT now(),
  update_time timestamptz NOT NULL DEFAULT now());

-- ORG-06: who acknowledged, when, for which accounts. Kept after the
-- organization is deleted.
CREATE TABLE acknowledgements (
  acknowledgement_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  organization_id uuid NOT NULL,
  user_id bigint NOT NULL,
  text_version text NOT NULL,
  hub_ids bigint[] NOT NULL,
  action text NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now());

-- ORG-02: the primary key keeps an account in at most one organization,
-- whatever the interleaving of requests.
CREATE TABLE org_members (
  hub_id bigint PRIMARY KEY CHECK (hub_id > 0),
  organization_id uuid NOT NULL REFERENCES organizations ON DELETE CASCADE,
  founding boolean NOT NULL DEFAULT false,
  joined_by bigint NOT NULL,
  acknowledgement_id uuid NOT NULL REFERENCES acknowledgements,
  join_time timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX org_members_org ON org_members (organization_id, join_time, hub_id);

-- Local copies (SPEC 2). `version` is the accounts service's aggregate
-- version: an older one is never written over a newer one.
CREATE TABLE account_copies (
  hub_id bigint PRIMARY KEY CHECK (hub_id > 0),
  name text NOT NULL DEFAULT '',
  kind int NOT NULL,
  hosting_location text NOT NULL,
  state int NOT NULL,
  has_professional boolean NOT NULL,
  marketing_enterprise boolean NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  update_time timestamptz NOT NULL DEFAULT now());

CREATE TABLE user_copies (
  user_id bigint PRIMARY KEY CHECK (user_id > 0),
  two_factor_enabled boolean NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  update_time timestamptz NOT NULL DEFAULT now());

-- roles: bit (Role value - 1), as in organizations_rules.h.
CREATE TABLE membership_copies (
  hub_id bigint NOT NULL CHECK (hub_id > 0),
  user_id bigint NOT NULL CHECK (user_id > 0),
  roles int NOT NULL,
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL,
  update_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (hub_id, user_id));
CREATE INDEX membership_copies_user ON membership_copies (user_id);
