/* liblockfile as a peer of the benchmark: `lockfile_agent PATH` speaks the agent
 * protocol of bench/peers/src/agent.rs on stdin/stdout. PATH is the lock file itself.
 *
 *   pair N     N x lockfile_create(PATH, 0, L_PID) + lockfile_remove(PATH): ns per pair
 *   wait MS    MS < 0: lockfile_create(PATH, 9, L_PID), lockfile-create's default
 *              retries (it sleeps 5 s, then 10 s, ... up to 60 s between attempts);
 *              MS == 0: one attempt; MS > 0: an error (liblockfile counts retries,
 *              it has no timeout)
 *   release    lockfile_remove(PATH)
 *   cpu        user + system ns of this process
 *
 * Build: cc -O2 -o lockfile_agent lockfile_agent.c -llockfile
 */
#define _POSIX_C_SOURCE 200809L
#include <lockfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static unsigned long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static unsigned long long cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((unsigned long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)) * 1000000000ULL +
           ((unsigned long long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec)) * 1000ULL;
}

int main(int argc, char **argv) {
    char line[128];
    const char *path;
    if (argc != 2) {
        fprintf(stderr, "usage: lockfile_agent PATH\n");
        return 64;
    }
    path = argv[1];
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        char command[16];
        long long arg = 0;
        if (sscanf(line, "%15s %lld", command, &arg) < 1)
            continue;
        if (strcmp(command, "pair") == 0) {
            unsigned long long t0 = mono_ns();
            long long i;
            int failed = 0;
            for (i = 0; i < arg && !failed; i++)
                failed = lockfile_create(path, 0, L_PID) != L_SUCCESS || lockfile_remove(path) != 0;
            if (failed)
                printf("error an uncontended pair failed\n");
            else
                printf("%.1f\n", (double)(mono_ns() - t0) / (double)(arg > 0 ? arg : 1));
        } else if (strcmp(command, "wait") == 0) {
            unsigned long long t0, t1;
            int rc;
            printf("waiting\n");
            fflush(stdout);
            if (arg > 0) {
                printf("error liblockfile has no timeout, only a number of retries\n");
                fflush(stdout);
                continue;
            }
            t0 = mono_ns();
            rc = lockfile_create(path, arg < 0 ? 9 : 0, L_PID);
            t1 = mono_ns();
            if (rc == L_SUCCESS)
                printf("got %llu\n", t1);
            else if (rc == L_MAXTRYS)
                printf("timeout %llu\n", t1 - t0);
            else
                printf("error lockfile_create returned %d\n", rc);
        } else if (strcmp(command, "release") == 0) {
            if (lockfile_remove(path) != 0) {
                fprintf(stderr, "lockfile_agent: lockfile_remove failed\n");
                return 1;
            }
            printf("ok\n");
        } else if (strcmp(command, "cpu") == 0) {
            printf("%llu\n", cpu_ns());
        } else {
            fprintf(stderr, "lockfile_agent: unknown command %s\n", command);
            return 1;
        }
        fflush(stdout);
    }
    return 0;
}
