/* loop_internal.h — what app.c (and tests) use to own the loop; services
 * use loop.h only. The life cycle is in docs/common/loop.md. */
#ifndef OM_LOOP_INTERNAL_H
#define OM_LOOP_INTERNAL_H

#include "loop.h"
#include "work.h"

/* Create the loop on this thread (it becomes the loop thread); loop_work
 * uses `pool` (NULL: loop_work's done runs with OM_E_UNAVAILABLE). */
int loop_init(work_pool *pool);
/* Begin the drain on the loop thread: loop_stopping() turns true, the stop
 * hooks run in reverse order, the LISTEN connection closes. */
void loop_begin_stop(void);
/* Any thread, once the pool has been stopped (no work can still complete):
 * the loop runs the completions left and closes its last handle, so uv_run
 * returns once the handles closed by the stop hooks are gone. */
void loop_finish(void);
/* After uv_run has returned: close the loop. 0, or the uv error of
 * uv_loop_close (the handles still open are logged). */
int loop_close(void);

#endif
