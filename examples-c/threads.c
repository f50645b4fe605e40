/* threads.c: one handle per thread.
 *
 * Every handle is its own lock owner, in every backend, so threads of one
 * process exclude each other exactly as processes do. THREADS threads each
 * add 1 to a plain counter ITERATIONS times, with a deliberately racy
 * read-modify-write (and a yield in the middle) inside an exclusive lock: the
 * total is right only if the lock really excludes.
 *
 * Build with -pthread (the marker below tells scripts/check-c.sh):
 *   cc -std=c99 -pthread threads.c $(pkg-config --cflags --libs unilock)
 * check-c: -pthread
 */
#define _POSIX_C_SOURCE 200809L

#include <unilock.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 4
#define ITERATIONS 500

static char path[4096 + 16];
static long counter; /* guarded by the lock on `path`, and nothing else */

static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "threads: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return -1;
}

static void *worker(void *arg)
{
    unilock *lock = NULL;
    int *result = arg;
    int i;
    int rc;

    *result = -1;
    rc = unilock_open(path, NULL, &lock);
    if (rc < 0) {
        fail("unilock_open", rc);
        return NULL;
    }
    for (i = 0; i < ITERATIONS; i++) {
        long seen;

        rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, 0, 0, -1);
        if (rc < 0) {
            fail("unilock_lock", rc);
            break;
        }
        seen = counter;
        sched_yield(); /* invite another thread in: the lock must keep it out */
        counter = seen + 1;
        rc = unilock_unlock(lock, 0, 0);
        if (rc < 0) {
            fail("unilock_unlock", rc);
            break;
        }
    }
    if (unilock_close(lock) < 0)
        rc = -1;
    *result = rc < 0 ? -1 : 0;
    return NULL;
}

/* Two handles in one thread: a wait that could only end if this thread
 * released its own lock first is refused with -EDEADLK instead of hanging. */
static int self_deadlock(void)
{
    unilock *mine = NULL, *again = NULL;
    int status = -1;
    int rc;

    if ((rc = unilock_open(path, NULL, &mine)) < 0 || (rc = unilock_open(path, NULL, &again)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }
    if ((rc = unilock_lock(mine, UNILOCK_EXCLUSIVE, 0, 0, 0)) < 0) {
        fail("unilock_lock", rc);
        goto out;
    }
    rc = unilock_lock(again, UNILOCK_EXCLUSIVE, 0, 0, 2000);
    {
        const char *detail = unilock_last_error();
        printf("main thread: waiting on a second handle while holding the first: %s (detail: %s)\n",
               rc == -EDEADLK ? "-EDEADLK" : rc == -ETIMEDOUT ? "-ETIMEDOUT" : rc == 0 ? "0" : "another error",
               rc < 0 && detail != NULL && detail[0] != '\0' ? "yes" : "none");
    }
    if (rc == -EDEADLK)
        status = 0;

out:
    if (unilock_close(mine) < 0)
        status = -1;
    if (unilock_close(again) < 0)
        status = -1;
    return status;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    pthread_t threads[THREADS];
    int results[THREADS];
    unilock_options opts;
    unilock *creator = NULL;
    int started = 0;
    int status = 1;
    int i;
    int rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "threads: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("threads: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/counter.lock", dir);

    /* Create the lock file once; the threads open it without UNILOCK_CREATE. */
    unilock_options_init(&opts);
    opts.flags = UNILOCK_CREATE;
    if ((rc = unilock_open(path, &opts, &creator)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }
    if ((rc = unilock_close(creator)) < 0) {
        fail("unilock_close", rc);
        goto out;
    }

    for (started = 0; started < THREADS; started++) {
        rc = pthread_create(&threads[started], NULL, worker, &results[started]);
        if (rc != 0) {
            fprintf(stderr, "threads: pthread_create: %s\n", strerror(rc));
            break;
        }
    }
    status = started == THREADS ? 0 : 1;
    for (i = 0; i < started; i++) {
        rc = pthread_join(threads[i], NULL);
        if (rc != 0) {
            fprintf(stderr, "threads: pthread_join: %s\n", strerror(rc));
            status = 1;
        } else if (results[i] != 0) {
            status = 1;
        }
    }
    if (status != 0)
        goto out;
    printf("%d threads x %d increments, one handle each\n", THREADS, ITERATIONS);
    printf("total %ld, expected %d: %s\n", counter, THREADS * ITERATIONS,
           counter == THREADS * ITERATIONS ? "ok" : "LOST UPDATES");
    if (counter != THREADS * ITERATIONS)
        status = 1;

    if (self_deadlock() < 0)
        status = 1;

out:
    if (unlink(path) != 0 && errno != ENOENT) {
        perror("threads: unlink");
        status = 1;
    }
    if (rmdir(dir) != 0) {
        perror("threads: rmdir");
        status = 1;
    }
    return status;
}
