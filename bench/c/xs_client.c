/* xenstore load client for bench/xenstore.py, linked against Debian's libxenstore.
 *
 *   xs_client MODE NCLIENTS SECONDS      (socket: $XENSTORED_PATH)
 *
 * MODE: read | write | directory | watch | tx. Forks NCLIENTS processes, each with its
 * own connection, starts them together, runs each for SECONDS and prints the total
 * number of completed operations per second (watch: events received; tx: commits).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <xenstore.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long run(const char *mode, int idx, double seconds, int go_fd)
{
    struct xs_handle *h = xs_open(0);
    char key[64], dir[64], val[32];
    long n = 0;
    unsigned int len, num;
    char go;

    if (!h) { perror("xs_open"); exit(2); }
    snprintf(dir, sizeof dir, "/bench/c%d", idx);
    snprintf(key, sizeof key, "/bench/c%d/key", idx);
    if (!xs_write(h, XBT_NULL, key, "0", 1)) { perror("xs_write"); exit(2); }
    if (!strcmp(mode, "watch") && !xs_watch(h, key, "tok")) { perror("xs_watch"); exit(2); }
    if (!strcmp(mode, "watch")) {          /* the initial event of a new watch */
        char **ev = xs_read_watch(h, &num);
        free(ev);
    }
    if (read(go_fd, &go, 1) != 1) exit(2);
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < 20; i++) {
            if (!strcmp(mode, "read")) {
                void *v = xs_read(h, XBT_NULL, key, &len);
                if (!v) { perror("xs_read"); exit(2); }
                free(v);
                n++;
            } else if (!strcmp(mode, "write")) {
                if (!xs_write(h, XBT_NULL, key, "some-value-0123456789", 21)) {
                    perror("xs_write"); exit(2);
                }
                n++;
            } else if (!strcmp(mode, "directory")) {
                char **d = xs_directory(h, XBT_NULL, dir, &num);
                if (!d) { perror("xs_directory"); exit(2); }
                free(d);
                n++;
            } else if (!strcmp(mode, "watch")) {
                snprintf(val, sizeof val, "%ld", n);
                if (!xs_write(h, XBT_NULL, key, val, strlen(val))) { perror("xs_write"); exit(2); }
                char **ev = xs_read_watch(h, &num);
                if (!ev) { perror("xs_read_watch"); exit(2); }
                free(ev);
                n++;
            } else {                         /* tx: start, read, write, commit */
                xs_transaction_t t = xs_transaction_start(h);
                if (!t) { perror("xs_transaction_start"); exit(2); }
                void *v = xs_read(h, t, key, &len);
                free(v);
                snprintf(val, sizeof val, "%ld", n);
                xs_write(h, t, key, val, strlen(val));
                if (xs_transaction_end(h, t, false))
                    n++;
                else if (errno != EAGAIN) { perror("xs_transaction_end"); exit(2); }
            }
        }
    }
    xs_close(h);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s read|write|directory|watch|tx NCLIENTS SECONDS\n", argv[0]);
        return 1;
    }
    const char *mode = argv[1];
    int nclients = atoi(argv[2]);
    double seconds = atof(argv[3]);
    int go[2], res[2];
    if (pipe(go) || pipe(res)) { perror("pipe"); return 1; }
    for (int i = 0; i < nclients; i++) {
        if (fork() == 0) {
            close(go[1]);
            long n = run(mode, i, seconds, go[0]);
            if (write(res[1], &n, sizeof n) != sizeof n) _exit(2);
            _exit(0);
        }
    }
    close(go[0]);
    close(res[1]);
    usleep(300000);                          /* let every child connect and set up */
    for (int i = 0; i < nclients; i++)
        if (write(go[1], "g", 1) != 1) return 1;
    long total = 0, n;
    int got = 0;
    while (read(res[0], &n, sizeof n) == sizeof n) { total += n; got++; }
    int status, bad = 0;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status)) bad = 1;
    if (bad || got != nclients) { fprintf(stderr, "a client failed\n"); return 2; }
    printf("%.0f\n", total / seconds);
    return 0;
}
