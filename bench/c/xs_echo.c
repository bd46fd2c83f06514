/* The transport floor for bench/xenstore.py: a single-threaded epoll server on a Unix
 * socket that frames xenstore messages and answers each with a message of the same
 * size (its own header and payload; TRANSACTION_START gets "1"), plus, once a
 * connection sent WATCH, one WATCH_EVENT "<path>\0tok\0" after each WRITE reply and
 * the initial event after WATCH, as xenstored does. No tree, no checks: what is left
 * is syscalls, wake-ups and framing.
 *
 *   xs_echo SOCKET_PATH
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

struct hdr { uint32_t type, req_id, tx_id, len; };
struct conn { int fd, watching; size_t have; char in[65536 + 4112]; char out[3 * 65536 + 8192]; };

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: %s SOCKET\n", argv[0]); return 1; }
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 128)) { perror("bind"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                c = calloc(1, sizeof *c);
                c->fd = accept(ls, NULL, NULL);
                struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
                continue;
            }
            ssize_t r = read(c->fd, c->in + c->have, 65536);
            if (r <= 0) { close(c->fd); free(c); continue; }
            c->have += r;
            size_t pos = 0, olen = 0;
            while (c->have - pos >= sizeof(struct hdr)) {
                struct hdr h;
                memcpy(&h, c->in + pos, sizeof h);
                if (c->have - pos < sizeof h + h.len) break;
                char *p = c->in + pos + sizeof h;
                if (h.type == 6) {                      /* TRANSACTION_START */
                    struct hdr o = h; o.len = 2;
                    memcpy(c->out + olen, &o, sizeof o); memcpy(c->out + olen + 16, "1", 2);
                    olen += 18;
                } else {
                    memcpy(c->out + olen, c->in + pos, sizeof h + h.len);
                    olen += sizeof h + h.len;
                }
                if (h.type == 4 || (h.type == 11 && c->watching)) {   /* WATCH, WRITE */
                    size_t plen = strnlen(p, h.len);
                    struct hdr o = { 15, 0, 0, plen + 5 };
                    memcpy(c->out + olen, &o, sizeof o);
                    memcpy(c->out + olen + 16, p, plen);
                    memcpy(c->out + olen + 16 + plen, "\0tok\0", 5);
                    olen += 16 + plen + 5;
                    c->watching = 1;
                }
                pos += sizeof h + h.len;
            }
            memmove(c->in, c->in + pos, c->have - pos);
            c->have -= pos;
            for (size_t off = 0; off < olen; ) {
                ssize_t w = write(c->fd, c->out + off, olen - off);
                if (w <= 0) break;
                off += w;
            }
        }
    }
}
