-- The partners service's own schema (SPEC 6). Accounts, users and memberships
-- are local, versioned copies of the accounts service's data (SPEC 2), fed by
-- its events and fetched from it when missing; everything else is owned here.

-- Local copies (SPEC 2). `version` is the aggregate's version in accounts; a
-- row is only ever replaced by a newer version. Deleted aggregates stay as
-- tombstones so a late, older event cannot bring them back.
CREATE TABLE account_copy (
  hub_id bigint PRIMARY KEY CHECK (hub_id > 0),
  kind int NOT NULL DEFAULT 0,
  name text NOT NULL DEFAULT '',
  mrr_minor bigint NOT NULL DEFAULT 0,
  mrr_currency text NOT NULL DEFAULT '',
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL);

CREATE TABLE user_copy (
  user_id bigint PRIMARY KEY CHECK (user_id > 0),
  email text NOT NULL DEFAULT '',
  display_name text NOT NULL DEFAULT '',
  deleted boolean NOT NULL DEFAULT false,
  version bigint NOT NULL);

-- roles: bit (1 << (Role - 1)); present = false is a tombstone.
CREATE TABLE membership_copy (
  hub_id bigint NOT NULL,
  user_id bigint NOT NULL,
  present boolean NOT NULL,
  roles int NOT NULL DEFAULT 0,
  partner_employee boolean NOT NULL DEFAULT false,
  link_partner_hub_id bigint NOT NULL DEFAULT 0,
  link_assignment_id text NOT NULL DEFAULT '',
  version bigint NOT NULL,
  PRIMARY KEY (hub_id, user_id));
CREATE INDEX membership_copy_user ON membership_copy (user_id);

-- PART-01: who tagged an employee and when (the tag itself is
-- membership_copy.partner_employee, owned by accounts).
CREATE TABLE employee_tag (
  partner_hub_id bigint NOT NULL,
  user_id bigint NOT NULL,
  tag_time timestamptz NOT NULL DEFAULT now(),
  tagged_by bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (partner_hub_id, user_id));

-- PART-02: the partner's client list.
CREATE TABLE client (
  partner_hub_id bigint NOT NULL,
  client_hub_id bigint NOT NULL,
  source int NOT NULL,
  add_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (partner_hub_id, client_hub_id));

-- PART-03..PART-09: one row per assignment; its access request (PART-04) is
-- the PENDING phase of the same row. States and causes are the proto's
-- numbers (AssignmentState, AssignmentChangeCause).
--
-- link_*: the partner_link in accounts follows the state (ACTIVE: linked;
-- otherwise: not linked). A state change that needs the accounts service sets
-- link_sync in the same transaction (the intent); the call is then made with
-- the row locked, and link_sync cleared when it succeeded. A crash in between
-- leaves link_sync set and the sync loop (main.c) finishes the work.
CREATE TABLE assignment (
  id uuid PRIMARY KEY,
  request_id uuid UNIQUE,
  partner_hub_id bigint NOT NULL,
  employee_user_id bigint NOT NULL,
  client_hub_id bigint NOT NULL,
  state int NOT NULL,
  state_cause int NOT NULL,
  assigned_by bigint NOT NULL DEFAULT 0,
  version bigint NOT NULL DEFAULT 1,
  create_time timestamptz NOT NULL DEFAULT now(),
  activate_time timestamptz,
  end_time timestamptz,
  update_time timestamptz NOT NULL DEFAULT now(),
  expire_time timestamptz,
  send_count int NOT NULL DEFAULT 0,
  last_send_time timestamptz,
  answered_by bigint NOT NULL DEFAULT 0,
  answer_time timestamptz,
  answer_reason text NOT NULL DEFAULT '',
  link_sync boolean NOT NULL DEFAULT false,
  link_gen int NOT NULL DEFAULT 0,
  link_adopt boolean NOT NULL DEFAULT false,
  link_roles int NOT NULL DEFAULT 0,
  link_actor text NOT NULL DEFAULT '',
  link_sync_after timestamptz,
  membership_removed boolean NOT NULL DEFAULT false,
  end_actor text NOT NULL DEFAULT '',
  revoke_emitted boolean NOT NULL DEFAULT false);
-- PART-06: one open (PENDING or ACTIVE) assignment per user and client, over
-- all partners. Emails are unique per user (accounts), so this is "one
-- partner per email and client", enforced by the database even when two
-- partners assign at the same moment.
CREATE UNIQUE INDEX assignment_open_per_client ON assignment (client_hub_id, employee_user_id)
  WHERE state IN (1, 2);
CREATE INDEX assignment_partner_employee ON assignment (partner_hub_id, employee_user_id);
CREATE INDEX assignment_partner_client ON assignment (partner_hub_id, client_hub_id);
CREATE INDEX assignment_pending_expiry ON assignment (expire_time) WHERE state = 1;
CREATE INDEX assignment_link_sync ON assignment (link_sync_after) WHERE link_sync;

-- PART-06/PART-12: a tagged employee refused for a client because another
-- partner holds the email there.
CREATE TABLE refusal (
  partner_hub_id bigint NOT NULL,
  client_hub_id bigint NOT NULL,
  user_id bigint NOT NULL,
  refuse_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (partner_hub_id, client_hub_id, user_id));

-- PART-04: email link tokens, one per recipient and event; only the SHA-256
-- of the token is kept.
CREATE TABLE request_token (
  token_hash bytea PRIMARY KEY,
  assignment_id uuid NOT NULL REFERENCES assignment (id) ON DELETE CASCADE,
  recipient_user_id bigint NOT NULL,
  event_id text NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now(),
  used_time timestamptz);

-- PART-13: activities attributed to a partner (through an ACTIVE assignment).
CREATE TABLE activity (
  id bigserial PRIMARY KEY,
  assignment_id uuid NOT NULL REFERENCES assignment (id) ON DELETE CASCADE,
  at timestamptz NOT NULL,
  kind text NOT NULL);
CREATE INDEX activity_assignment_at ON activity (assignment_id, at);

CREATE TABLE activity_seen (
  reporter text NOT NULL,
  activity_id text NOT NULL,
  seen_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (reporter, activity_id));
