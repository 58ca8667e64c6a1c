-- Issue 19: the W3C trace context of the event that queued the email, so the
-- sender's token call and SMTP exchange continue that trace. '' = none.
ALTER TABLE delivery ADD COLUMN traceparent text NOT NULL DEFAULT '';
