-- NOTE-04: the HTML part of an email whose kind has its own
-- templates/<locale>/<kind>.html, rendered with the text when the event is
-- handled (its variables are known only then). '' = made at send time from
-- the text in the locale's layout. Expand-only: older replicas ignore it.
ALTER TABLE delivery ADD COLUMN body_html text NOT NULL DEFAULT '';
