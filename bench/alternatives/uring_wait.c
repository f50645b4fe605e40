/*
 * bench/alternatives/uring_wait.c: a wait mechanism measured against the library's,
 * not used by it. `make bench` (scripts/bench.sh) builds and runs it and puts its
 * table in BENCHMARKS.md, "Wait mechanisms measured".
 *
 * The waiting thread makes the raw blocking lock call itself, so a hand-off costs
 * exactly what the raw call's does. What lets a deadline or a cancel end that call
 * without a signal: before waiting, the thread arms an io_uring poll on an eventfd.
 * An abort (from another thread: a watchdog at the deadline, or a cancel) makes the
 * restarted call fail, then writes the eventfd. The poll's completion is task work
 * queued to the thread that armed it (TWA_SIGNAL), which wakes its interruptible
 * sleep in the lock call; with no signal to deliver, the kernel restarts the call,
 * and the restarted call fails:
 * - fcntl (POSIX, OFD): the call re-reads its struct flock, whose l_whence the abort
 *   has made invalid: EINVAL;
 * - flock: the call is made on a descriptor of its own (a dup of the lock's, for
 *   this wait), which the abort replaces with /dev/null (dup2): the restarted call
 *   locks /dev/null instead, and the thread lets go of it.
 * A thread whose call returned while an abort was under way takes the abort's
 * completion before it goes on, so that no task work reaches the host's next call.
 *
 * A deadline needs no other thread: the waiting thread submits, with its wait, an
 * IORING_OP_TIMEOUT (IORING_TIMEOUT_ETIME_SUCCESS, so that its expiry does not break
 * the link) linked to the operation that makes the restarted call fail: closing the
 * wait's own descriptor (FLOCK, OFD: a dup of the lock's, whose lock belongs to the
 * open file description and survives), or reading an invalid l_whence from a pipe
 * into the struct flock (POSIX, where closing any descriptor of the file would drop
 * the process's locks on it). Their completions are task work for the thread.
 *
 * Usage: uring_wait ROUNDS DIR. The holder and the waiter run on the first CPU this
 * process may use, then the holder on the second (when there is one). Prints rows:
 * | backend | placement | raw p50 / p99 µs | this p50 / p99 µs | p50 ratio |
 * one line per backend on an abort 20 ms into a wait, and one on 20 ms deadlines.
 * Exits 2 when io_uring cannot be set up here (the rows then say so).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { FLOCK, OFD, POSIX };
static const char *const NAMES[] = {"FLOCK", "OFD", "POSIX"};
static const long WHOLE = 1L << 62;

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) {
        perror("sched_setaffinity");
        exit(1);
    }
}

/* A raw lock call on fd: lock (blocking or not) or unlock, whole file. */
static int raw(int backend, int fd, int type, int wait)
{
    if (backend == FLOCK)
        return flock(fd, type == F_UNLCK ? LOCK_UN : LOCK_EX | (wait ? 0 : LOCK_NB));
    struct flock f = {.l_type = (short)type, .l_whence = SEEK_SET, .l_len = WHOLE};
    int cmd = backend == OFD ? (wait ? F_OFD_SETLKW : F_OFD_SETLK) : (wait ? F_SETLKW : F_SETLK);
    return fcntl(fd, cmd, &f);
}

static int someone_blocked(void)
{
    FILE *f = fopen("/proc/locks", "r");
    char line[256];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, "->") != NULL;
    if (f)
        fclose(f);
    return n;
}

/* ---- the ring: one poll request at a time ---- */

struct ring {
    int fd;
    _Atomic unsigned *sq_tail, *cq_head, *cq_tail;
    unsigned *sq_mask, *sq_array;
    struct io_uring_sqe *sqes;
};

static int ring_init(struct ring *r)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(SYS_io_uring_setup, 4, &p);
    if (r->fd < 0)
        return -errno;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP))
        return -ENOSYS;
    char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQ_RING);
    void *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (q == MAP_FAILED || sqes == MAP_FAILED)
        return -errno;
    r->sq_tail = (_Atomic unsigned *)(q + p.sq_off.tail);
    r->sq_mask = (unsigned *)(q + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(q + p.sq_off.array);
    r->cq_head = (_Atomic unsigned *)(q + p.cq_off.head);
    r->cq_tail = (_Atomic unsigned *)(q + p.cq_off.tail);
    r->sqes = sqes;
    return 0;
}

static int arm_poll(struct ring *r, int efd)
{
    unsigned tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
    unsigned i = tail & *r->sq_mask;
    struct io_uring_sqe *e = &r->sqes[i];
    memset(e, 0, sizeof *e);
    e->opcode = IORING_OP_POLL_ADD;
    e->fd = efd;
    e->poll32_events = POLLIN;
    r->sq_array[i] = i;
    atomic_store_explicit(r->sq_tail, tail + 1, memory_order_release);
    return (int)syscall(SYS_io_uring_enter, r->fd, 1, 0, 0, NULL, 0);
}

/* The next submission entry, cleared. */
static struct io_uring_sqe *next_sqe(struct ring *r)
{
    unsigned tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
    unsigned i = tail & *r->sq_mask;
    struct io_uring_sqe *e = &r->sqes[i];
    memset(e, 0, sizeof *e);
    r->sq_array[i] = i;
    atomic_store_explicit(r->sq_tail, tail + 1, memory_order_release);
    return e;
}

/* Takes one completion, waiting for it. */
static void take_completion(struct ring *r)
{
    for (;;) {
        unsigned head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
        if (head != atomic_load_explicit(r->cq_tail, memory_order_acquire)) {
            atomic_store_explicit(r->cq_head, head + 1, memory_order_release);
            return;
        }
        syscall(SYS_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    }
}

/* ---- the waiting thread's state ---- */

enum { IDLE, WAITING, ABORTING };

struct waiter {
    struct ring ring;
    int efd;
    int backend;
    int fd;         /* the lock's descriptor */
    int wait_fd;    /* FLOCK: this wait's own descriptor */
    int null_fd;    /* FLOCK: /dev/null, put in wait_fd's place by an abort */
    struct flock fl; /* fcntl: the call's argument, poisoned by an abort */
    _Atomic int state;
};

static int waiter_init(struct waiter *w, int backend, int fd)
{
    memset(w, 0, sizeof *w);
    w->backend = backend;
    w->fd = fd;
    w->efd = eventfd(0, EFD_CLOEXEC);
    w->null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int rc = ring_init(&w->ring);
    if (rc == 0 && arm_poll(&w->ring, w->efd) != 1)
        rc = -errno;
    return rc;
}

/* Blocks until the lock is granted (0) or an abort ended the wait (-ECANCELED). */
static int waiter_lock(struct waiter *w)
{
    int rc;
    if (w->backend == FLOCK)
        w->wait_fd = dup(w->fd);
    else
        w->fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = WHOLE};
    atomic_store(&w->state, WAITING);
    if (w->backend == FLOCK)
        rc = flock(w->wait_fd, LOCK_EX);
    else
        rc = fcntl(w->fd, w->backend == OFD ? F_OFD_SETLKW : F_SETLKW, &w->fl);
    int expected = WAITING;
    int aborted = !atomic_compare_exchange_strong(&w->state, &expected, IDLE);
    if (aborted) {
        /* The abort's completion, so that its task work reaches no later call. */
        uint64_t v;
        take_completion(&w->ring);
        if (read(w->efd, &v, sizeof v) != sizeof v)
            abort();
        arm_poll(&w->ring, w->efd);
        atomic_store(&w->state, IDLE);
    }
    if (w->backend == FLOCK) {
        struct stat a, b;
        /* Granted on the lock's file, or (after an abort) on /dev/null. */
        int on_lock = fstat(w->wait_fd, &a) == 0 && fstat(w->fd, &b) == 0 &&
                      a.st_ino == b.st_ino && a.st_dev == b.st_dev;
        if (rc == 0 && !on_lock)
            flock(w->wait_fd, LOCK_UN);
        close(w->wait_fd);
        return rc == 0 && on_lock ? 0 : -ECANCELED;
    }
    /* A grant that won the race with an abort is kept. */
    return rc == 0 ? 0 : aborted ? -ECANCELED : -errno;
}

/* From any thread: ends the wait in progress, if any. */
static void waiter_abort(struct waiter *w)
{
    int expected = WAITING;
    if (!atomic_compare_exchange_strong(&w->state, &expected, ABORTING))
        return;
    if (w->backend == FLOCK)
        dup2(w->null_fd, w->wait_fd);
    else
        w->fl.l_whence = 99;
    uint64_t one = 1;
    if (write(w->efd, &one, sizeof one) != sizeof one)
        abort();
}

/* A wait with a deadline of `ms`, ended by io_uring alone (the lock stays held by
 * another process): returns the lock call's errno. */
static int deadline_wait(struct waiter *w, int ms)
{
    struct __kernel_timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    int wait_fd = dup(w->fd);
    int poison[2];
    short invalid = 99;
    if (wait_fd < 0 || pipe(poison) != 0 ||
        write(poison[1], &invalid, sizeof invalid) != sizeof invalid)
        return -1;
    w->fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = WHOLE};
    struct io_uring_sqe *e = next_sqe(&w->ring);
    e->opcode = IORING_OP_TIMEOUT;
    e->addr = (uint64_t)(uintptr_t)&ts;
    e->len = 1;
    e->timeout_flags = IORING_TIMEOUT_ETIME_SUCCESS;
    e->flags = IOSQE_IO_LINK;
    e = next_sqe(&w->ring);
    if (w->backend == POSIX) {
        e->opcode = IORING_OP_READ;
        e->fd = poison[0];
        e->addr = (uint64_t)(uintptr_t)&w->fl.l_whence;
        e->len = sizeof w->fl.l_whence;
        e->off = (uint64_t)-1;
    } else {
        e->opcode = IORING_OP_CLOSE;
        e->fd = wait_fd;
    }
    if (syscall(SYS_io_uring_enter, w->ring.fd, 2, 0, 0, NULL, 0) != 2)
        return -1;
    int rc;
    if (w->backend == FLOCK)
        rc = flock(wait_fd, LOCK_EX);
    else if (w->backend == OFD)
        rc = fcntl(wait_fd, F_OFD_SETLKW, &w->fl);
    else
        rc = fcntl(w->fd, F_SETLKW, &w->fl);
    int err = rc == 0 ? 0 : errno;
    take_completion(&w->ring);
    take_completion(&w->ring);
    if (w->backend == POSIX)
        close(wait_fd);
    close(poison[0]);
    close(poison[1]);
    return err;
}

/* ---- the holder process ---- */

static int to_holder[2], from_holder[2];

static void holder_main(const char *path, int backend, int cpu)
{
    pin(cpu);
    int fd = open(path, O_RDWR);
    char c;
    while (read(to_holder[0], &c, 1) == 1) {
        if (c == 'L') {
            raw(backend, fd, F_WRLCK, 1);
            if (write(from_holder[1], "H", 1) != 1)
                break;
        } else if (c == 'R') {
            while (!someone_blocked())
                usleep(20);
            uint64_t t = now_ns();
            raw(backend, fd, F_UNLCK, 0);
            if (write(from_holder[1], &t, sizeof t) != sizeof t)
                break;
        } else if (c == 'U') {
            raw(backend, fd, F_UNLCK, 0);
            if (write(from_holder[1], "K", 1) != 1)
                break;
        }
    }
    _exit(0);
}

static void say(char c)
{
    if (write(to_holder[1], &c, 1) != 1)
        exit(1);
}

static void hear(void *buf, size_t n)
{
    if (read(from_holder[0], buf, n) != (ssize_t)n)
        exit(1);
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static struct waiter *aborted_waiter;

static void *abort_later(void *arg)
{
    (void)arg;
    usleep(20000);
    waiter_abort(aborted_waiter);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: uring_wait ROUNDS DIR\n");
        return 64;
    }
    int rounds = atoi(argv[1]);
    const char *dir = argv[2];
    double *raw_us = malloc(sizeof(double) * (size_t)rounds);
    double *ours_us = malloc(sizeof(double) * (size_t)rounds);
    cpu_set_t allowed;
    int first = -1, second = -1;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return 1;
    for (int c = 0; c < CPU_SETSIZE && second < 0; c++)
        if (CPU_ISSET(c, &allowed)) {
            if (first < 0)
                first = c;
            else
                second = c;
        }
    const int cpus[2][2] = {{first, first}, {second, first}}; /* holder's, waiter's */
    const char *const placements[2] = {"one CPU", "two CPUs"};
    const int n_placements = second < 0 ? 1 : 2;
    for (int backend = FLOCK; backend <= POSIX; backend++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/uring-%s", dir, NAMES[backend]);
        close(open(path, O_RDWR | O_CREAT, 0600));
        for (int p = 0; p < n_placements; p++) {
            if (pipe(to_holder) || pipe(from_holder))
                return 1;
            pid_t holder = fork();
            if (holder == 0) {
                close(to_holder[1]);
                holder_main(path, backend, cpus[p][0]);
            }
            pin(cpus[p][1]);
            int fd = open(path, O_RDWR | O_CLOEXEC);
            struct waiter w;
            int rc = waiter_init(&w, backend, fd);
            if (rc != 0) {
                printf("| %s | %s | io_uring unavailable here: %s | | |\n", NAMES[backend],
                       placements[p], strerror(-rc));
                return 2;
            }
            int n_raw = 0, n_ours = 0;
            for (int i = 0; i < 2 * rounds + 6; i++) {
                char c;
                int mine = i % 2;
                say('L');
                hear(&c, 1);
                say('R');
                int r = mine ? waiter_lock(&w) : raw(backend, fd, F_WRLCK, 1);
                uint64_t t1 = now_ns(), t0;
                hear(&t0, sizeof t0);
                if (r != 0) {
                    fprintf(stderr, "%s: lock call failed: %d\n", NAMES[backend], r);
                    return 1;
                }
                raw(backend, fd, F_UNLCK, 0);
                if (i < 6)
                    continue;
                if (mine)
                    ours_us[n_ours++] = (double)(t1 - t0) / 1000.0;
                else
                    raw_us[n_raw++] = (double)(t1 - t0) / 1000.0;
            }
            qsort(raw_us, (size_t)n_raw, sizeof(double), by_value);
            qsort(ours_us, (size_t)n_ours, sizeof(double), by_value);
            printf("| %s | %s | %.1f / %.1f | %.1f / %.1f | %.2fx |\n", NAMES[backend],
                   placements[p], raw_us[n_raw / 2], raw_us[n_raw * 99 / 100],
                   ours_us[n_ours / 2], ours_us[n_ours * 99 / 100],
                   ours_us[n_ours / 2] / raw_us[n_raw / 2]);
            if (p == n_placements - 1) {
                /* An abort 20 ms into a wait, from another thread. */
                char c;
                pthread_t t;
                say('L');
                hear(&c, 1);
                aborted_waiter = &w;
                uint64_t t0 = now_ns();
                pthread_create(&t, NULL, abort_later, NULL);
                int r = waiter_lock(&w);
                uint64_t t1 = now_ns();
                pthread_join(t, NULL);
                struct timespec nap = {0, 1000000};
                int slept = nanosleep(&nap, NULL);
                printf("ABORT %s: the wait returned %s after %.1f ms (abort at 20 ms); "
                       "no request left waiting: %s; a later nanosleep undisturbed: %s\n",
                       NAMES[backend], r == -ECANCELED ? "ECANCELED" : strerror(-r),
                       (double)(t1 - t0) / 1e6, someone_blocked() ? "no" : "yes",
                       slept == 0 ? "yes" : "no");
                /* Deadlines of 20 ms ended by io_uring alone. */
                double over[5];
                int err = 0;
                for (int k = 0; k < 5; k++) {
                    uint64_t d0 = now_ns();
                    err = deadline_wait(&w, 20);
                    over[k] = (double)(now_ns() - d0) / 1e6 - 20.0;
                }
                qsort(over, 5, sizeof(double), by_value);
                printf("ABORT %s: a 20 ms deadline with no other thread (a linked io_uring "
                       "timeout, then %s): the wait failed with %s, %.2f ms late (median of "
                       "5); no request left waiting: %s\n",
                       NAMES[backend],
                       backend == POSIX ? "a read of an invalid l_whence into the struct flock"
                                        : "a close of the wait's own descriptor",
                       err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : strerror(err),
                       over[2], someone_blocked() ? "no" : "yes");
                say('U');
                hear(&c, 1);
            }
            close(to_holder[1]);
            waitpid(holder, NULL, 0);
            close(to_holder[0]);
            close(from_holder[0]);
            close(from_holder[1]);
            close(fd);
        }
    }
    return 0;
}
