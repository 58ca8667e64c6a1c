-- Copy batches (ASSET-06, SPEC 9 scale-out): the items of a running job are
-- shared out among all workers of all replicas in batches. Each batch is a
-- range of items of one rank, claimed under the job row's lock and leased to
-- one worker (owner, lease_until on the database clock); the worker copies
-- it in one transaction that locks the items it settles (FOR UPDATE SKIP
-- LOCKED). An item records the batch that settled it. The counts of a
-- finished batch are added to the job's counters by the next claim
-- (folded). Expand-only: a new table and a nullable column, which replicas
-- of the previous version ignore.
CREATE TABLE copy_batches (
  job_id uuid NOT NULL REFERENCES copy_jobs ON DELETE CASCADE,
  batch_no int NOT NULL,
  rank int NOT NULL,
  seq_lo int NOT NULL,
  seq_hi int NOT NULL,
  owner text NOT NULL,
  lease_until timestamptz,
  claim_time timestamptz NOT NULL DEFAULT now(),
  finish_time timestamptz,
  copied int NOT NULL DEFAULT 0,
  skipped int NOT NULL DEFAULT 0,
  failed int NOT NULL DEFAULT 0,
  folded boolean NOT NULL DEFAULT false,
  PRIMARY KEY (job_id, batch_no));

-- The batch that settled the item; NULL when a stop (cancel, COPY_NOT_ALLOWED)
-- settled it, or a replica of the previous version copied it.
ALTER TABLE copy_items ADD COLUMN batch_no int;
