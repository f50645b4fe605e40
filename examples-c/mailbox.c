/* mailbox.c: a mail delivery agent's lock, "dotlock + fcntl".
 *
 * Mail readers and delivery agents lock a mailbox in two ways at once: a lock
 * file beside it (mbox.lock, made by liblockfile, procmail, mutt) and an fcntl
 * lock on the mailbox itself. One unilock handle with the DOTLOCK and OFD
 * backends takes both, in that order, and releases them in reverse; a reader
 * that only knows lock files (here a DOTLOCK handle on mbox.lock) and one that
 * only knows fcntl locks (an OFD handle on mbox) are both kept out.
 *
 *   cc -std=c99 mailbox.c $(pkg-config --cflags --libs unilock)
 */
#define _POSIX_C_SOURCE 200809L

#include <unilock.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "mailbox: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return 1;
}

static int open_with(const char *path, uint32_t backends, unilock **out)
{
    unilock_options opts;
    unilock_options_init(&opts);
    opts.backends = backends;
    return unilock_open(path, &opts, out);
}

/* A reader tries once: prints whether it got in. */
static int reader_tries(const char *who, unilock *l)
{
    int rc = unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0);
    if (rc == 0) {
        printf("%s: got in\n", who);
        return unilock_unlock(l, 0, 0);
    }
    if (rc == -EAGAIN) {
        printf("%s: kept out (-EAGAIN)\n", who);
        return 0;
    }
    return fail("unilock_lock", rc);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    char mbox[4096 + 16];
    char dotfile[4096 + 32];
    unilock *agent = NULL, *dot_reader = NULL, *fcntl_reader = NULL;
    int status = 1;
    int fd, rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "mailbox: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("mailbox: mkdtemp");
        return 1;
    }
    snprintf(mbox, sizeof mbox, "%s/alice", dir);
    snprintf(dotfile, sizeof dotfile, "%s.lock", mbox);
    fd = open(mbox, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) {
        perror("mailbox: open");
        goto out;
    }

    if ((rc = open_with(mbox, UNILOCK_BACKEND_DOTLOCK | UNILOCK_BACKEND_OFD, &agent)) < 0 ||
        (rc = open_with(dotfile, UNILOCK_BACKEND_DOTLOCK, &dot_reader)) < 0 ||
        (rc = open_with(mbox, UNILOCK_BACKEND_OFD, &fcntl_reader)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }
    printf("before delivery: alice.lock exists: %s\n", access(dotfile, F_OK) == 0 ? "yes" : "no");

    rc = unilock_lock(agent, UNILOCK_EXCLUSIVE, 0, 0, 5000);
    if (rc < 0) {
        fail("unilock_lock", rc);
        goto out;
    }
    printf("delivery agent: locked; alice.lock exists: %s\n",
           access(dotfile, F_OK) == 0 ? "yes" : "no");
    if (reader_tries("lock-file reader", dot_reader) != 0 ||
        reader_tries("fcntl reader", fcntl_reader) != 0)
        goto out;
    if (write(fd, "From bob\n\nhello\n\n", 17) != 17) {
        perror("mailbox: write");
        goto out;
    }
    printf("delivery agent: message appended\n");

    rc = unilock_unlock(agent, 0, 0);
    if (rc < 0) {
        fail("unilock_unlock", rc);
        goto out;
    }
    printf("delivery agent: unlocked; alice.lock exists: %s\n",
           access(dotfile, F_OK) == 0 ? "yes" : "no");
    if (reader_tries("lock-file reader", dot_reader) != 0 ||
        reader_tries("fcntl reader", fcntl_reader) != 0)
        goto out;
    status = 0;

out:
    if (unilock_close(agent) < 0)
        status = 1;
    if (unilock_close(dot_reader) < 0)
        status = 1;
    if (unilock_close(fcntl_reader) < 0)
        status = 1;
    if (fd >= 0)
        close(fd);
    if (unlink(mbox) != 0 && errno != ENOENT)
        status = 1;
    if (rmdir(dir) != 0) {
        perror("mailbox: rmdir");
        status = 1;
    }
    return status;
}
