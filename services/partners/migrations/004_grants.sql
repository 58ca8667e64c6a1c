-- Partner grants (issue 17, PART-14 ... PART-22). Expand-only: every new
-- column has a default that describes the rows already there (an assignment
-- made before this release runs "until removed", with the roles its approval
-- gave it).
--
-- duration_days: PART-14, 0 = until removed. grant_end_time: when an ACTIVE
-- grant ends (set on activation; moved by extensions; NULL = no end).
-- auto_extend: PART-15. requested_roles: PART-18, role bits as link_roles
-- (1 << (Role - 1)); 8 = MARKETING_ACCESS. notices_sent: PART-16, the
-- thresholds (days) already announced for the current end.
-- dormant_notice_time: PART-19, when the dormant notice went.
-- last_send_event_id / last_send_failed: PART-22, the event of the last
-- access-request email and whether the notifier gave an email of it up
-- (EmailDeadLettered: bounced, or failed after the last attempt).
ALTER TABLE assignment
  ADD COLUMN duration_days int NOT NULL DEFAULT 0 CHECK (duration_days BETWEEN 0 AND 730),
  ADD COLUMN grant_end_time timestamptz,
  ADD COLUMN auto_extend boolean NOT NULL DEFAULT false,
  ADD COLUMN requested_roles int NOT NULL DEFAULT 8,
  ADD COLUMN notices_sent int[] NOT NULL DEFAULT '{}',
  ADD COLUMN dormant_notice_time timestamptz,
  ADD COLUMN last_send_event_id text NOT NULL DEFAULT '',
  ADD COLUMN last_send_failed boolean NOT NULL DEFAULT false;

-- The expiry and notice rounds (PART-16): ACTIVE grants by end.
CREATE INDEX assignment_grant_end ON assignment (grant_end_time) WHERE state = 2 AND grant_end_time IS NOT NULL;
-- The client view (PART-21) and the kill switch (PART-20).
CREATE INDEX assignment_last_send_event ON assignment (last_send_event_id) WHERE state = 1;
CREATE INDEX assignment_client_open ON assignment (client_hub_id, create_time DESC, id) WHERE state IN (1, 2);

-- PART-20: a client's kill switch. partner_hub_id 0 = every partner. While a
-- row exists, assignments of those partners to this client are refused.
CREATE TABLE partner_block (
  client_hub_id bigint NOT NULL,
  partner_hub_id bigint NOT NULL,
  block_time timestamptz NOT NULL DEFAULT now(),
  blocked_by bigint NOT NULL DEFAULT 0,
  reason text NOT NULL DEFAULT '',
  PRIMARY KEY (client_hub_id, partner_hub_id));
