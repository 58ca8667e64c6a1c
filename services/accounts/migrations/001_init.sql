-- accounts 001: accounts, their subscriptions, users and memberships (SPEC 1).
-- Runs with search_path = accounts (the runtime creates the schema and its own
-- tables: outbox, applied_events, idempotency, audit). Enum values are stored
-- by name so that the rows read the same as the API and the proto numbers
-- never leak into the data.

-- Server-chosen ids. Imports may bring their own ids, which the inserts skip
-- over (ON CONFLICT), so the two never collide.
CREATE SEQUENCE hub_id_seq START WITH 1000001;
CREATE SEQUENCE user_id_seq START WITH 5000001;

CREATE TABLE accounts (
    hub_id                 bigint PRIMARY KEY CHECK (hub_id > 0),
    name                   text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    kind                   text NOT NULL CHECK (kind IN ('STANDARD', 'PARTNER', 'SANDBOX')),
    hosting_location       text NOT NULL CHECK (char_length(hosting_location) BETWEEN 1 AND 32),
    sensitive_data_enabled boolean NOT NULL DEFAULT false,
    state                  text NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'DEACTIVATED')),
    mrr_amount_minor       bigint NOT NULL DEFAULT 0 CHECK (mrr_amount_minor >= 0),
    mrr_currency           text NOT NULL DEFAULT '' CHECK (mrr_currency ~ '^([A-Z]{3})?$'),
    -- one step per event emitted about the account (events.proto)
    version                bigint NOT NULL CHECK (version > 0),
    create_time            timestamptz NOT NULL DEFAULT now(),
    update_time            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_name_lower ON accounts (lower(name) text_pattern_ops, hub_id);

-- At most one subscription per hub (the primary key).
CREATE TABLE subscriptions (
    hub_id bigint NOT NULL REFERENCES accounts (hub_id) ON DELETE CASCADE,
    hub    text NOT NULL CHECK (hub IN ('MARKETING', 'SALES', 'SERVICE', 'CMS', 'OPERATIONS', 'COMMERCE')),
    tier   text NOT NULL CHECK (tier IN ('FREE', 'STARTER', 'PROFESSIONAL', 'ENTERPRISE')),
    PRIMARY KEY (hub_id, hub)
);

CREATE TABLE users (
    user_id            bigint PRIMARY KEY CHECK (user_id > 0),
    email              text NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    display_name       text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    locale             text NOT NULL DEFAULT 'en',
    two_factor_enabled boolean NOT NULL DEFAULT false,
    version            bigint NOT NULL CHECK (version > 0),
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now()
);
-- Emails are globally unique ignoring case (SPEC 1); stored as given.
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE INDEX users_display_name_lower ON users (lower(display_name) text_pattern_ops);

CREATE TABLE memberships (
    hub_id           bigint NOT NULL REFERENCES accounts (hub_id) ON DELETE CASCADE,
    user_id          bigint NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    roles            text[] NOT NULL DEFAULT '{}'
                     CHECK (roles <@ ARRAY['SUPER_ADMIN', 'PARTNER_ADMIN', 'ACCOUNT_PERMISSIONS',
                                           'MARKETING_ACCESS']),
    seats            text[] NOT NULL DEFAULT '{}' CHECK (seats <@ ARRAY['SALES', 'SERVICE']),
    -- PART-01: only meaningful in a PARTNER account (checked by the service)
    partner_employee boolean NOT NULL DEFAULT false,
    -- partner_link (PART-05, PART-07); all NULL when there is none
    partner_hub_id   bigint CHECK (partner_hub_id > 0),
    assignment_id    text,
    link_owns_membership boolean NOT NULL DEFAULT false,
    link_time        timestamptz,
    version          bigint NOT NULL CHECK (version > 0),
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hub_id, user_id),
    CHECK ((partner_hub_id IS NULL) = (assignment_id IS NULL)),
    CHECK (partner_hub_id IS NOT NULL OR NOT link_owns_membership)
);
CREATE INDEX memberships_user ON memberships (user_id, hub_id);
CREATE INDEX memberships_assignment ON memberships (assignment_id) WHERE assignment_id IS NOT NULL;

-- The last version of deleted aggregates ("accounts/1", "users/2",
-- "accounts/1/memberships/2"), so that a re-created one continues from it and
-- consumers, who never apply an older version over a newer one, see it.
CREATE TABLE tombstones (
    aggregate   text PRIMARY KEY,
    version     bigint NOT NULL,
    delete_time timestamptz NOT NULL DEFAULT now()
);
