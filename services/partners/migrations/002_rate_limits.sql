-- Abuse limits (issue 13, OWASP API4/API6): fixed-window counters per
-- bucket ("<what>:actor:<user_id>" or "<what>:client:<hub_id>"), shared by
-- every replica. A bucket keeps only its current window (older ones are
-- deleted when it is next used).
CREATE TABLE rate_counter (
  bucket text NOT NULL,
  window_start timestamptz NOT NULL,
  hits bigint NOT NULL CHECK (hits >= 0),
  PRIMARY KEY (bucket, window_start));
