/* readers_writer.c: shared and exclusive locks on one file.
 *
 * Readers take UNILOCK_SHARED and coexist; a writer needs UNILOCK_EXCLUSIVE and
 * gets it only when no reader holds the file. Each handle is its own lock
 * owner, so the three handles below behave like three processes.
 *
 *   cc -std=c99 readers_writer.c $(pkg-config --cflags --libs unilock)
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

static const char *mode_name(unilock_mode mode)
{
    return mode == UNILOCK_SHARED ? "shared" : mode == UNILOCK_EXCLUSIVE ? "exclusive" : "?";
}

static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "readers_writer: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return -1;
}

/* Tries once (timeout 0) and prints the outcome; returns the result code. */
static int try_lock(unilock *lock, const char *who, unilock_mode mode)
{
    int rc = unilock_lock(lock, mode, 0, 0, 0);

    if (rc == 0) {
        printf("%s: %s lock taken\n", who, mode_name(mode));
    } else if (rc == -EAGAIN) {
        const char *detail = unilock_last_error();
        printf("%s: %s lock refused: %s: %s (detail: %s)\n", who, mode_name(mode),
               errno_name(rc), unilock_strerror(rc),
               detail != NULL && detail[0] != '\0' ? "yes" : "none");
    } else {
        fail("unilock_lock", rc);
    }
    return rc;
}

static int unlock(unilock *lock, const char *who)
{
    int rc = unilock_unlock(lock, 0, 0);

    if (rc < 0)
        return fail("unilock_unlock", rc);
    printf("%s: unlocked\n", who);
    return 0;
}

/* Asks who would stop `lock` from taking `mode`, without taking anything. */
static int show_holder(unilock *lock, const char *who, unilock_mode mode)
{
    unilock_holder holder;
    int rc;

    memset(&holder, 0, sizeof holder);
    rc = unilock_query(lock, mode, 0, 0, &holder);
    if (rc < 0)
        return fail("unilock_query", rc);
    if (rc == 0) {
        printf("%s: query: %s lock would be granted now\n", who, mode_name(mode));
        return 0;
    }
    printf("%s: query: %s lock blocked by a %s %s lock held by this process: %s\n", who,
           mode_name(mode), holder.backend == UNILOCK_BACKEND_FLOCK ? "flock" : "non-flock",
           mode_name(holder.mode), holder.self == 1 && holder.pid == getpid() ? "yes" : "no");
    return 0;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    char path[4096 + 16];
    unilock_options opts;
    unilock *reader1 = NULL, *reader2 = NULL, *writer = NULL;
    int status = 1;
    int rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "readers_writer: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("readers_writer: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/data.lock", dir);

    /* Default backend (flock), created if missing. */
    unilock_options_init(&opts);
    opts.flags = UNILOCK_CREATE;
    if ((rc = unilock_open(path, &opts, &reader1)) < 0 ||
        (rc = unilock_open(path, &opts, &reader2)) < 0 ||
        (rc = unilock_open(path, &opts, &writer)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }

    if (try_lock(reader1, "reader 1", UNILOCK_SHARED) != 0 ||
        try_lock(reader2, "reader 2", UNILOCK_SHARED) != 0)
        goto out;
    if (show_holder(writer, "writer", UNILOCK_SHARED) < 0 ||
        show_holder(writer, "writer", UNILOCK_EXCLUSIVE) < 0)
        goto out;
    if (try_lock(writer, "writer", UNILOCK_EXCLUSIVE) != -EAGAIN)
        goto out;

    /* One reader leaves: the other still keeps the writer out. */
    if (unlock(reader1, "reader 1") < 0)
        goto out;
    if (try_lock(writer, "writer", UNILOCK_EXCLUSIVE) != -EAGAIN)
        goto out;

    /* The last reader leaves: the writer gets in, and now readers wait. */
    if (unlock(reader2, "reader 2") < 0)
        goto out;
    if (try_lock(writer, "writer", UNILOCK_EXCLUSIVE) != 0)
        goto out;
    if (try_lock(reader1, "reader 1", UNILOCK_SHARED) != -EAGAIN)
        goto out;
    if (show_holder(reader1, "reader 1", UNILOCK_SHARED) < 0)
        goto out;
    if (unlock(writer, "writer") < 0)
        goto out;
    if (try_lock(reader1, "reader 1", UNILOCK_SHARED) != 0)
        goto out;
    status = 0;

out:
    if (unilock_close(reader1) < 0)
        status = 1;
    if (unilock_close(reader2) < 0)
        status = 1;
    if (unilock_close(writer) < 0)
        status = 1;
    if (unlink(path) != 0 && errno != ENOENT) {
        perror("readers_writer: unlink");
        status = 1;
    }
    if (rmdir(dir) != 0) {
        perror("readers_writer: rmdir");
        status = 1;
    }
    if (status == 0)
        printf("done\n");
    return status;
}
