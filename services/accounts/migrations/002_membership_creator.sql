-- accounts 002: who created each membership (PART-08: a partner-linked identity
-- changes or removes only memberships it created). Expand-only: a nullable
-- column; NULL means a service or a rule created it, or the row predates this
-- migration (creator unknown, so never "created by" the actor).
ALTER TABLE memberships ADD COLUMN created_by_user_id bigint CHECK (created_by_user_id > 0);
