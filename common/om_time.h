/* om_time.h — deadlines for pthread_cond_timedwait. */
#ifndef OM_TIME_H
#define OM_TIME_H

#include <time.h>

/* `clock` now plus `ms` milliseconds: pass the clock the condition variable
 * waits on (CLOCK_REALTIME unless pthread_condattr_setclock said otherwise). */
static inline struct timespec om_deadline(clockid_t clock, long ms) {
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

#endif
