/* om_sql.h — named values in SQL text (issue 16: no bare numbers in SQL).
 *
 * States, kinds and outcomes are C enums. SQL names them through
 * OM_SQL(<macro>), which spells an integer macro as a literal at compile
 * time; each such macro sits next to its enum with a _Static_assert that the
 * two agree:
 *
 *     #define NT_SQL_SENT 2
 *     _Static_assert(NT_SQL_SENT == NT_ST_SENT, "NT_SQL_SENT");
 *     ... "WHERE state = " OM_SQL(NT_SQL_SENT) ...
 *
 * Why not $n parameters: statements stay constant text, so a partial index
 * whose predicate names a state (notifier's delivery_due, partners'
 * assignment_open_per_client, ...) is still provably usable in a generic
 * plan, and an ON CONFLICT arbiter's WHERE matches its index. */
#ifndef OM_SQL_H
#define OM_SQL_H

#define OM_SQL(v) OM_SQL_(v)
#define OM_SQL_(v) #v

#endif
