/* work.h — the worker pool: threads that may block (PostgreSQL, Redis).
 *
 * One pool per process (app.c starts it before def->init). It serves both
 * the gRPC handlers that block (rpc_server.c queues them here) and the
 * loop's background work (loop_work). Jobs are intrusive: the caller embeds
 * a work_job in its own struct, so queuing allocates nothing. */
#ifndef OM_WORK_H
#define OM_WORK_H

#include <stdbool.h>

typedef struct work_pool work_pool;
typedef struct work_job work_job;

struct work_job {
    void (*run)(work_job *job); /* on a worker thread */
    work_job *next;             /* the pool's */
};

typedef struct work_pool_opts {
    int threads;                                /* default 8 */
    void (*thread_start)(int index, void *arg); /* once per thread, before any job */
    void (*thread_stop)(int index, void *arg);  /* once per thread, at its end */
    void (*after_job)(void *arg);               /* after every job (e.g. pg_local_end_call) */
    void *arg;
} work_pool_opts;

int work_pool_new(work_pool **out, const work_pool_opts *opts);
int work_pool_threads(const work_pool *p);

/* Queue a job; false (job not queued) when `limit` jobs are already queued
 * (limit <= 0: no limit) or the pool is stopping. Any thread. */
bool work_submit(work_pool *p, work_job *job, int limit);

/* Refuse new jobs, let the workers finish every job already queued, join
 * them. Not from a worker thread. */
void work_pool_stop(work_pool *p);
void work_pool_free(work_pool *p); /* stops it first */

/* The process's pool (app.c); NULL outside a service process. */
work_pool *work_default(void);
void work_set_default(work_pool *p);

#endif
