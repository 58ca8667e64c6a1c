/* work.c — the worker pool (work.h, docs/common/loop.md). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "log.h"
#include "om_err.h"
#include "work.h"

struct work_pool {
    work_pool_opts opts;
    pthread_t *threads;
    int n_threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    work_job *head, *tail;
    int queued;
    bool stop;
    bool stopped;
};

static work_pool *default_pool;

work_pool *work_default(void) {
    return default_pool;
}

void work_set_default(work_pool *p) {
    default_pool = p;
}

typedef struct thread_arg {
    work_pool *pool;
    int index;
} thread_arg;

static void *work_main(void *arg_) {
    thread_arg *arg = arg_;
    work_pool *p = arg->pool;
    int index = arg->index;
    free(arg);
    if (p->opts.thread_start) p->opts.thread_start(index, p->opts.arg);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->head == NULL && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
        work_job *job = p->head;
        if (job == NULL) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        p->head = job->next;
        if (p->head == NULL) p->tail = NULL;
        p->queued--;
        pthread_mutex_unlock(&p->mu);
        job->run(job);
        if (p->opts.after_job) p->opts.after_job(p->opts.arg);
    }
    if (p->opts.thread_stop) p->opts.thread_stop(index, p->opts.arg);
    return NULL;
}

int work_pool_new(work_pool **out, const work_pool_opts *opts) {
    *out = NULL;
    work_pool *p = calloc(1, sizeof *p);
    if (p == NULL) return OM_E_NOMEM;
    p->opts = *opts;
    if (p->opts.threads <= 0) p->opts.threads = 8;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)p->opts.threads, sizeof *p->threads);
    if (p->threads == NULL) {
        work_pool_free(p);
        return OM_E_NOMEM;
    }
    for (int i = 0; i < p->opts.threads; i++) {
        thread_arg *arg = malloc(sizeof *arg);
        if (arg == NULL) {
            work_pool_free(p);
            return OM_E_NOMEM;
        }
        arg->pool = p;
        arg->index = i;
        if (pthread_create(&p->threads[i], NULL, work_main, arg) != 0) {
            free(arg);
            work_pool_free(p);
            return OM_E_INTERNAL;
        }
        p->n_threads++;
    }
    *out = p;
    return 0;
}

int work_pool_threads(const work_pool *p) {
    return p->n_threads;
}

bool work_submit(work_pool *p, work_job *job, int limit) {
    pthread_mutex_lock(&p->mu);
    if (p->stop || (limit > 0 && p->queued >= limit)) {
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    job->next = NULL;
    if (p->tail) p->tail->next = job;
    else p->head = job;
    p->tail = job;
    p->queued++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return true;
}

void work_pool_stop(work_pool *p) {
    if (p == NULL) return;
    pthread_mutex_lock(&p->mu);
    bool already = p->stop;
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (already) {
        /* a second caller: the first joins */
        return;
    }
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    p->n_threads = 0;
    p->stopped = true;
}

void work_pool_free(work_pool *p) {
    if (p == NULL) return;
    if (!p->stop) work_pool_stop(p);
    else if (!p->stopped) {
        for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
        p->n_threads = 0;
    }
    if (default_pool == p) default_pool = NULL;
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}
