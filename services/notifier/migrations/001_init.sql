-- The notifier's delivery log and outbound queue (NOTE-01, NOTE-03).
-- One row per (event, recipient): the unique key is what makes an event
-- mailed once per recipient, whatever the redeliveries of the event.
CREATE TABLE delivery (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL,
    event_type text NOT NULL,
    recipient_user_id bigint NOT NULL CHECK (recipient_user_id > 0),
    recipient_email text NOT NULL,
    locale text NOT NULL,
    template text NOT NULL,
    message_id text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    -- access-request emails: the client account, for the hourly cap; 0 otherwise
    client_hub_id bigint NOT NULL DEFAULT 0,
    -- access-request emails: the request; its link's token is fetched from
    -- partners when sending and never stored here (PART-04: hash only)
    access_request_id text NOT NULL DEFAULT '',
    -- 1 PENDING, 2 SENT, 3 RETRYING, 4 DEFERRED, 5 DEAD_LETTERED, 6 CANCELLED
    state smallint NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 6),
    attempts integer NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    send_time timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_once UNIQUE (event_id, recipient_user_id)
);
-- What the senders lease: due rows in PENDING, RETRYING or DEFERRED.
CREATE INDEX delivery_due ON delivery (next_attempt_at, id) WHERE state IN (1, 3, 4);
-- The per-client hourly cap counts what was sent recently.
CREATE INDEX delivery_client_sent ON delivery (client_hub_id, send_time) WHERE client_hub_id > 0 AND state = 2;
CREATE INDEX delivery_recipient ON delivery (recipient_user_id, id);

-- Emails given up after the last attempt, with the reason (NOTE-03). A replay
-- puts the delivery back in the queue; if it fails again a new dead letter
-- is written.
CREATE TABLE dead_letter (
    id bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES delivery (id),
    event_id text NOT NULL,
    event_type text NOT NULL,
    recipient_user_id bigint NOT NULL,
    recipient_email text NOT NULL,
    reason text NOT NULL,
    attempts integer NOT NULL,
    dead_letter_time timestamptz NOT NULL DEFAULT now(),
    replay_count integer NOT NULL DEFAULT 0,
    last_replay_time timestamptz
);
CREATE INDEX dead_letter_event ON dead_letter (event_id);
