-- SPEC 2 local copies under the names every service uses (common/copies,
-- docs/common/copies.md): account_copies, user_copies, membership_copies.
--
-- Expand step of a rename (docs/deployment.md, migrations): the tables are
-- renamed and the old names stay as plain views over them. A plain
-- single-table view is automatically updatable in PostgreSQL (INSERT,
-- INSERT ... ON CONFLICT, UPDATE, DELETE, SELECT ... FOR UPDATE), so pods of
-- the previous release keep reading and writing the same rows during the
-- rolling update. The contract step (DROP VIEW account_copy, user_copy,
-- membership_copy) belongs to a later release, once no pod of this one's
-- predecessor can run.
ALTER TABLE account_copy RENAME TO account_copies;
ALTER TABLE user_copy RENAME TO user_copies;
ALTER TABLE membership_copy RENAME TO membership_copies;
ALTER INDEX membership_copy_user RENAME TO membership_copies_user;

CREATE VIEW account_copy AS SELECT * FROM account_copies;
CREATE VIEW user_copy AS SELECT * FROM user_copies;
CREATE VIEW membership_copy AS SELECT * FROM membership_copies;
