/* record_lock.c: locking records of a fixed-size record file by byte range.
 *
 * Byte ranges need the OFD backend (open-file-description locks: owned by the
 * handle, not by the process, so closing some other descriptor of the file
 * never drops them). The example writes a file of 10 records of 64 bytes,
 * locks record 3 with one handle, and shows from a second handle that record
 * 4 is still free while record 3 is not, and who holds it.
 *
 *   cc -std=c99 record_lock.c $(pkg-config --cflags --libs unilock)
 */
#define _POSIX_C_SOURCE 200809L

#include <unilock.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define RECORD_SIZE 64
#define RECORD_COUNT 10
#define MAX_HOLDERS 16

static const char *errno_name(int rc)
{
    switch (-rc) {
    case 0: return "0";
    case EAGAIN: return "-EAGAIN";
    case EOPNOTSUPP: return "-EOPNOTSUPP";
    default: return "another error";
    }
}

static const char *mode_name(unilock_mode mode)
{
    return mode == UNILOCK_SHARED ? "shared" : mode == UNILOCK_EXCLUSIVE ? "exclusive" : "?";
}

static const char *backend_name(unilock_backend backend)
{
    switch (backend) {
    case UNILOCK_BACKEND_FLOCK: return "flock";
    case UNILOCK_BACKEND_OFD: return "ofd";
    case UNILOCK_BACKEND_POSIX: return "posix";
    case UNILOCK_BACKEND_DOTLOCK: return "dotlock";
    default: return "?";
    }
}

static int fail(const char *what, int rc)
{
    const char *detail = unilock_last_error();
    fprintf(stderr, "record_lock: %s: %s (%s)\n", what, unilock_strerror(rc),
            detail != NULL ? detail : "no detail");
    return -1;
}

static uint64_t record_start(int record)
{
    return (uint64_t)record * RECORD_SIZE;
}

/* Writes all of buf at offset, or fails. */
static int write_at(int fd, const char *buf, size_t len, off_t offset)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("record_lock: pwrite");
            return -1;
        }
        buf += n;
        len -= (size_t)n;
        offset += n;
    }
    return 0;
}

static int format_record(char *buf, const char *text)
{
    size_t len = strlen(text);

    if (len >= RECORD_SIZE)
        return -1;
    memset(buf, ' ', RECORD_SIZE);
    memcpy(buf, text, len);
    buf[RECORD_SIZE - 1] = '\n';
    return 0;
}

/* The records file, made with plain write(): unilock never writes the files it locks. */
static int create_records(const char *path)
{
    char buf[RECORD_SIZE];
    char text[32];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    int i;

    if (fd < 0) {
        perror("record_lock: open");
        return -1;
    }
    for (i = 0; i < RECORD_COUNT; i++) {
        snprintf(text, sizeof text, "record %d", i);
        if (format_record(buf, text) < 0 || write_at(fd, buf, RECORD_SIZE, (off_t)record_start(i)) < 0) {
            (void)close(fd);
            return -1;
        }
    }
    if (close(fd) != 0) {
        perror("record_lock: close");
        return -1;
    }
    printf("created a file of %d records of %d bytes\n", RECORD_COUNT, RECORD_SIZE);
    return 0;
}

static int update_record(const char *path, int record, const char *text)
{
    char buf[RECORD_SIZE];
    int fd = open(path, O_WRONLY);

    if (fd < 0) {
        perror("record_lock: open");
        return -1;
    }
    if (format_record(buf, text) < 0 || write_at(fd, buf, RECORD_SIZE, (off_t)record_start(record)) < 0) {
        (void)close(fd);
        return -1;
    }
    /* With POSIX fcntl locks this close would drop every lock of the process
     * on the file; OFD locks belong to the handle and stay. */
    if (close(fd) != 0) {
        perror("record_lock: close");
        return -1;
    }
    return 0;
}

static int print_record(const char *path, int record)
{
    char buf[RECORD_SIZE + 1];
    ssize_t n;
    int fd = open(path, O_RDONLY);

    if (fd < 0) {
        perror("record_lock: open");
        return -1;
    }
    n = pread(fd, buf, RECORD_SIZE, (off_t)record_start(record));
    if (n != RECORD_SIZE) {
        fprintf(stderr, "record_lock: short read of record %d\n", record);
        (void)close(fd);
        return -1;
    }
    if (close(fd) != 0) {
        perror("record_lock: close");
        return -1;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    printf("record %d reads \"%s\"\n", record, buf);
    return 0;
}

/* Tries once to lock one record exclusively; prints and returns the result. */
static int try_record(unilock *lock, const char *who, int record)
{
    int rc = unilock_lock(lock, UNILOCK_EXCLUSIVE, record_start(record), RECORD_SIZE, 0);

    if (rc == 0)
        printf("%s: record %d locked\n", who, record);
    else if (rc == -EAGAIN)
        printf("%s: record %d is locked by another handle: %s\n", who, record, errno_name(rc));
    else
        fail("unilock_lock", rc);
    return rc;
}

static void print_holder(const char *prefix, const unilock_holder *holder)
{
    printf("%sbytes %" PRIu64 "+%" PRIu64 " (record %" PRIu64 "), %s, %s, pid %s, self %d\n",
           prefix, holder->start, holder->len, holder->start / RECORD_SIZE,
           mode_name(holder->mode), backend_name(holder->backend),
           holder->pid == getpid() ? "self" : holder->pid < 0 ? "unknown" : "other",
           (int)holder->self);
}

static int query_record(unilock *lock, const char *who, int record)
{
    unilock_holder holder;
    int rc;

    memset(&holder, 0, sizeof holder);
    rc = unilock_query(lock, UNILOCK_EXCLUSIVE, record_start(record), RECORD_SIZE, &holder);
    if (rc < 0)
        return fail("unilock_query", rc);
    if (rc == 0) {
        printf("%s: query record %d: free\n", who, record);
    } else {
        printf("%s: query record %d: held: ", who, record);
        print_holder("", &holder);
    }
    return 0;
}

static int compare_start(const void *a, const void *b)
{
    uint64_t x = ((const unilock_holder *)a)->start, y = ((const unilock_holder *)b)->start;
    return x < y ? -1 : x > y;
}

static int list_locks(unilock *lock)
{
    unilock_holder holders[MAX_HOLDERS];
    size_t count = 0;
    size_t i;
    int rc;

    memset(holders, 0, sizeof holders);
    rc = unilock_list(lock, holders, MAX_HOLDERS, &count);
    if (rc < 0)
        return fail("unilock_list", rc);
    printf("locks on the file: %zu\n", count);
    if (count > MAX_HOLDERS)
        count = MAX_HOLDERS;
    qsort(holders, count, sizeof holders[0], compare_start);
    for (i = 0; i < count; i++)
        print_holder("  ", &holders[i]);
    return 0;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    char path[4096 + 16];
    unilock_options opts;
    unilock *a = NULL, *b = NULL, *whole = NULL;
    int created = 0;
    int status = 1;
    int rc;

    if (snprintf(dir, sizeof dir, "%s/unilock-example-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp") >= (int)sizeof dir) {
        fprintf(stderr, "record_lock: TMPDIR is too long\n");
        return 1;
    }
    if (mkdtemp(dir) == NULL) {
        perror("record_lock: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/records.dat", dir);
    if (create_records(path) < 0)
        goto out;
    created = 1;

    unilock_options_init(&opts);
    opts.backends = UNILOCK_BACKEND_OFD;
    if ((rc = unilock_open(path, &opts, &a)) < 0 || (rc = unilock_open(path, &opts, &b)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }

    if (try_record(a, "handle a", 3) != 0)
        goto out;
    if (update_record(path, 3, "record 3, updated under its lock") < 0)
        goto out;
    printf("handle a: record 3 written through another descriptor, which is closed\n");

    if (try_record(b, "handle b", 4) != 0 || try_record(b, "handle b", 3) != -EAGAIN)
        goto out;
    if (query_record(b, "handle b", 3) < 0 || query_record(b, "handle b", 5) < 0)
        goto out;
    if (list_locks(b) < 0)
        goto out;

    /* A whole-file backend refuses ranges instead of silently locking the whole file. */
    if ((rc = unilock_open(path, NULL, &whole)) < 0) {
        fail("unilock_open", rc);
        goto out;
    }
    rc = unilock_lock(whole, UNILOCK_EXCLUSIVE, record_start(3), RECORD_SIZE, 0);
    if (rc != -EOPNOTSUPP) {
        fprintf(stderr, "record_lock: a flock handle took a range: %d\n", rc);
        goto out;
    }
    {
        const char *detail = unilock_last_error();
        printf("flock handle asked for record 3: %s (detail: %s)\n", errno_name(rc),
               detail != NULL && detail[0] != '\0' ? "yes" : "none");
    }

    if ((rc = unilock_unlock(a, record_start(3), RECORD_SIZE)) < 0) {
        fail("unilock_unlock", rc);
        goto out;
    }
    printf("handle a: record 3 unlocked\n");
    if (try_record(b, "handle b", 3) != 0)
        goto out;
    if (print_record(path, 3) < 0 || print_record(path, 4) < 0)
        goto out;
    status = 0;

out:
    if (unilock_close(a) < 0)
        status = 1;
    if (unilock_close(b) < 0)
        status = 1;
    if (unilock_close(whole) < 0)
        status = 1;
    if (created && unlink(path) != 0) {
        perror("record_lock: unlink");
        status = 1;
    }
    if (rmdir(dir) != 0) {
        perror("record_lock: rmdir");
        status = 1;
    }
    return status;
}
