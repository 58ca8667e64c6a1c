-- Issue 15: the sender no longer holds a row's lock during the SMTP exchange
-- (SMTP runs on the event loop, PostgreSQL on the worker pool). A claim sets
-- lease_token and moves next_attempt_at past the longest exchange, in one
-- short transaction; the outcome is recorded only while lease_token is
-- still the claim's. A replica that dies leaves its rows due again when the
-- lease ends. 0 = not claimed.
ALTER TABLE delivery ADD COLUMN lease_token bigint NOT NULL DEFAULT 0;
-- The per-client cap (NOTE-03) counts claimed emails of a client in flight.
CREATE INDEX delivery_client_leased ON delivery (client_hub_id) WHERE client_hub_id > 0 AND lease_token <> 0;
