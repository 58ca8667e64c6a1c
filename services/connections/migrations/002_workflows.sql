-- Issue 18: WORKFLOWS, the third feature of a connection (CONN-10): a
-- workflow of the source account creates or edits records in the target
-- account. Same encoding as mirroring (Direction enum value; *_source the
-- ONE_WAY source, else 0). Expand-only: existing connections get OFF, and
-- replicas of the previous release, which do not write these columns,
-- leave them OFF.
ALTER TABLE connections
  ADD COLUMN workflows int NOT NULL DEFAULT 1 CHECK (workflows BETWEEN 1 AND 3),
  ADD COLUMN workflows_source bigint NOT NULL DEFAULT 0;
