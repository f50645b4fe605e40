/* timed_wait.c: waiting for a lock with a timeout, and asking who holds it.
 *
 * A child process takes the lock and says so through a pipe. The parent waits
 * 200 ms, gets -ETIMEDOUT, and asks unilock_query who holds the lock: the
 * child, by pid. Then it tells the child to let go (closing a second pipe)
 * and waits without polling until the lock is released.
 *
 *   cc -std=c99 timed_wait.c $(pkg-config --cflags --libs unilock)
 */
#define _POSIX_C_SOURCE 200809L

#include <unilock.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 200

static const char *errno_name(int rc)
{
    switch (-rc) {
    case 0: return "0";
    case EAGAIN: return "-EAGAIN";
    case ETIMEDOUT: return "-ETIMEDOUT";
    default: return "another error";
    }
}

static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "timed_wait: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return -1;
}

static long elapsed_ms(const struct timespec *since)
{
    struct timespec now;

    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
        return -1;
    return (long)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

static int read_byte(int fd, char *byte)
{
    ssize_t n;

    do
        n = read(fd, byte, 1);
    while (n < 0 && errno == EINTR);
    return (int)n;
}

/* The child: lock, report 'R' (ready) or 'F' (failed), hold the lock until the
 * parent closes the release pipe, then unlock and exit. Never returns. */
static void child(const char *path, int ready_fd, int release_fd)
{
    unilock_options opts;
    unilock *lock = NULL;
    char byte;
    int rc;

    unilock_options_init(&opts);
    opts.flags = UNILOCK_CREATE;
    rc = unilock_open(path, &opts, &lock);
    if (rc == 0)
        rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, 0, 0, 0);
    if (rc < 0)
        fail("child: unilock_lock", rc);
    byte = rc == 0 ? 'R' : 'F';
    if (write(ready_fd, &byte, 1) != 1 || rc < 0)
        _exit(1);
    if (read_byte(release_fd, &byte) != 0) /* EOF: the parent closed its end */
        _exit(1);
    if (unilock_close(lock) < 0)
        _exit(1);
    _exit(0);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    char path[4096 + 16];
    int ready[2] = {-1, -1}, release[2] = {-1, -1};
    pid_t pid = -1;
    unilock *lock = NULL;
    unilock_holder holder;
    struct timespec start;
    char byte;
    long waited;
    int wstatus;
    int status = 1;
    int rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "timed_wait: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("timed_wait: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/resource.lock", dir);

    if (pipe(ready) != 0 || pipe(release) != 0) {
        perror("timed_wait: pipe");
        goto out;
    }
    fflush(stdout); /* the child must not inherit unwritten output */
    pid = fork();
    if (pid < 0) {
        perror("timed_wait: fork");
        goto out;
    }
    if (pid == 0) {
        (void)close(ready[0]); /* closing a pipe end has nothing to report */
        (void)close(release[1]);
        child(path, ready[1], release[0]);
    }
    (void)close(ready[1]);
    (void)close(release[0]);
    ready[1] = release[0] = -1;

    if (read_byte(ready[0], &byte) != 1 || byte != 'R') {
        fprintf(stderr, "timed_wait: the child could not take the lock\n");
        goto out;
    }
    printf("child: holds the lock\n");

    if ((rc = unilock_open(path, NULL, &lock)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }
    if (clock_gettime(CLOCK_MONOTONIC, &start) != 0) {
        perror("timed_wait: clock_gettime");
        goto out;
    }
    rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, 0, 0, TIMEOUT_MS);
    waited = elapsed_ms(&start);
    if (rc != -ETIMEDOUT) {
        fail("unilock_lock did not time out", rc);
        goto out;
    }
    {
        const char *detail = unilock_last_error();
        printf("parent: waited %d ms: %s: %s (detail: %s)\n", TIMEOUT_MS, errno_name(rc),
               unilock_strerror(rc), detail != NULL && detail[0] != '\0' ? "yes" : "none");
    }
    /* A timed wait ends at its deadline, not earlier and not much later. */
    printf("parent: gave up after %d ms and promptly: %s\n", TIMEOUT_MS,
           waited >= TIMEOUT_MS - 1 && waited < TIMEOUT_MS + 5000 ? "yes" : "no");

    memset(&holder, 0, sizeof holder);
    rc = unilock_query(lock, UNILOCK_EXCLUSIVE, 0, 0, &holder);
    if (rc != 1) {
        fail("unilock_query did not report a holder", rc);
        goto out;
    }
    printf("parent: query: held %s, by the child: %s, by this process: %s\n",
           holder.mode == UNILOCK_EXCLUSIVE ? "exclusively" : "shared",
           holder.pid == pid ? "yes" : "no", holder.self ? "yes" : "no");

    /* Let the child go, and wait (no polling, no timeout) for the release. */
    (void)close(release[1]);
    release[1] = -1;
    rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, 0, 0, -1);
    if (rc < 0) {
        fail("unilock_lock", rc);
        goto out;
    }
    printf("parent: lock taken once the child released it\n");

    if (waitpid(pid, &wstatus, 0) != pid) {
        perror("timed_wait: waitpid");
        goto out;
    }
    pid = -1;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        fprintf(stderr, "timed_wait: the child failed (wait status %d)\n", wstatus);
        goto out;
    }
    printf("child: exited cleanly\n");
    status = 0;

out:
    if (pid > 0) { /* something failed: don't leave the child behind */
        if (kill(pid, SIGKILL) != 0)
            perror("timed_wait: kill");
        if (waitpid(pid, &wstatus, 0) != pid)
            perror("timed_wait: waitpid");
    }
    if (unilock_close(lock) < 0)
        status = 1;
    if (ready[0] >= 0)
        (void)close(ready[0]);
    if (ready[1] >= 0)
        (void)close(ready[1]);
    if (release[0] >= 0)
        (void)close(release[0]);
    if (release[1] >= 0)
        (void)close(release[1]);
    if (unlink(path) != 0 && errno != ENOENT) {
        perror("timed_wait: unlink");
        status = 1;
    }
    if (rmdir(dir) != 0) {
        perror("timed_wait: rmdir");
        status = 1;
    }
    return status;
}
