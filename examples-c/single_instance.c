/* single_instance.c: a cron-job guard.
 *
 * A job that must never run twice at once takes an exclusive lock with
 * timeout 0 (try once) on a well-known file and exits quietly when another
 * instance holds it. Here a second handle in the same program plays the
 * second instance: every handle is its own lock owner, so it sees exactly
 * the -EAGAIN that another process would see.
 *
 *   cc -std=c99 single_instance.c $(pkg-config --cflags --libs unilock)
 */
#define _POSIX_C_SOURCE 200809L

#include <unilock.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *errno_name(int rc)
{
    switch (-rc) {
    case 0: return "0";
    case EAGAIN: return "-EAGAIN";
    case ETIMEDOUT: return "-ETIMEDOUT";
    default: return "another error";
    }
}

/* Prints what failed, the library's name for the error and this thread's
 * detail (which call, which path, which system error). */
static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "single_instance: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return 1;
}

/* One run of the job: returns 0 when it ran, 1 when another instance holds the
 * lock, -1 on an error. The handle is kept in *held while the job runs. */
static int try_start(const char *path, const char *who, unilock **held)
{
    unilock_options opts;
    unilock *lock = NULL;
    int rc;

    unilock_options_init(&opts);
    opts.flags = UNILOCK_CREATE;
    rc = unilock_open(path, &opts, &lock);
    if (rc < 0) {
        fail("unilock_open", rc);
        return -1;
    }
    rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, 0, 0, 0);
    if (rc == -EAGAIN) {
        const char *detail = unilock_last_error();
        printf("%s: lock held elsewhere: %s: %s\n", who, errno_name(rc), unilock_strerror(rc));
        printf("%s: error detail names the lock file: %s\n", who,
               detail != NULL && strstr(detail, path) != NULL ? "yes" : "no");
        printf("%s: exits without running the job\n", who);
        rc = unilock_close(lock);
        if (rc < 0) {
            fail("unilock_close", rc);
            return -1;
        }
        return 1;
    }
    if (rc < 0) {
        fail("unilock_lock", rc);
        (void)unilock_close(lock); /* already failing: keep the first error */
        return -1;
    }
    printf("%s: lock taken, running the job\n", who);
    *held = lock;
    return 0;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    char path[4096 + 16];
    unilock *first = NULL;
    unilock *second = NULL;
    int status = 1;
    int rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "single_instance: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("single_instance: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/job.lock", dir);

    if (try_start(path, "first instance", &first) != 0)
        goto out;
    /* While the first instance runs, a second start finds the lock held. */
    if (try_start(path, "second instance", &second) != 1)
        goto out;

    /* The first instance finishes: closing its handle releases the lock. */
    rc = unilock_close(first);
    first = NULL;
    if (rc < 0) {
        fail("unilock_close", rc);
        goto out;
    }
    printf("first instance: finished, lock released\n");

    if (try_start(path, "next run", &second) != 0)
        goto out;
    rc = unilock_close(second);
    second = NULL;
    if (rc < 0) {
        fail("unilock_close", rc);
        goto out;
    }
    printf("next run: finished, lock released\n");
    status = 0;

out:
    if (unilock_close(first) < 0)
        status = 1;
    if (unilock_close(second) < 0)
        status = 1;
    if (unlink(path) != 0 && errno != ENOENT) {
        perror("single_instance: unlink");
        status = 1;
    }
    if (rmdir(dir) != 0) {
        perror("single_instance: rmdir");
        status = 1;
    }
    return status;
}
