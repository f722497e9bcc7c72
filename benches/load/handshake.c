/* TLS handshakes per second: a new TCP connection and a new TLS handshake for every request,
 * GET PATH with `Connection: close`, read until the server closes. By default every handshake
 * is a full one (a fresh SSL object each time, client session cache off, no session kept).
 * With `resume`, each connection slot offers the session (ticket) of its previous connection,
 * as a browser would, and the JSON counts how many the server resumed. wrk and h2load resume
 * whenever they reconnect (they keep the SSL object) and do not say how often it worked.
 *
 * Latency is from connect() to the end of the response, so it includes the TCP connect and
 * the handshake. Prints one JSON line shaped like benches/load/report.lua's (microseconds),
 * plus the protocol and cipher of the first connection.
 *
 * Build: cc -O2 -o handshake handshake.c -lssl -lcrypto -lpthread
 * Usage: handshake HOST PORT PATH CONNECTIONS SECONDS THREADS [resume]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, WRITING, READING };

struct conn {
    int fd, state, got;
    SSL *ssl;
    SSL_SESSION *sess;
    uint64_t start;
    char buf[64];
};

struct worker {
    pthread_t thread;
    int conns;
    uint64_t *lat;
    size_t n, cap;
    uint64_t errors, non2xx, reused;
};

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static char request[512];
static size_t request_len;
static uint64_t deadline;
static int resume;
static const uint64_t STALL_US = 10000000;
static char negotiated[128];
static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void watch(int ep, struct conn *c, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &e);
}

static void finish(struct conn *c) {
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static void open_conn(int ep, struct conn *c, struct worker *w) {
    for (;;) {
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->start = now_us();
        c->got = 0;
        c->ssl = NULL;
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EINPROGRESS) {
            c->state = CONNECTING;
            watch(ep, c, EPOLLOUT, EPOLL_CTL_ADD);
            return;
        }
        w->errors++;
        close(c->fd);
        c->fd = -1;
        if (now_us() >= deadline) return;
        usleep(1000);
    }
}

/* Drives one connection as far as it goes; returns 1 when it is done (ok or failed). */
static int step(int ep, struct conn *c, struct worker *w) {
    int r, err;
    if (c->state == CONNECTING) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr) goto failed;
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (resume && c->sess) SSL_set_session(c->ssl, c->sess);
        SSL_set_connect_state(c->ssl);
        c->state = HANDSHAKE;
    }
    if (c->state == HANDSHAKE) {
        r = SSL_do_handshake(c->ssl);
        if (r != 1) goto want;
        if (!negotiated[0]) {
            pthread_mutex_lock(&once);
            snprintf(negotiated, sizeof negotiated, "%s %s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
            pthread_mutex_unlock(&once);
        }
        c->state = WRITING;
    }
    if (c->state == WRITING) {
        r = SSL_write(c->ssl, request, (int)request_len);
        if (r <= 0) goto want;
        c->state = READING;
    }
    for (;;) {
        char tmp[4096];
        r = SSL_read(c->ssl, tmp, sizeof tmp);
        if (r <= 0) break;
        if (c->got < (int)sizeof c->buf) {
            int n = r < (int)sizeof c->buf - c->got ? r : (int)sizeof c->buf - c->got;
            memcpy(c->buf + c->got, tmp, n);
        }
        c->got += r;
    }
    err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) goto want_err;
    /* The server closed (close_notify or EOF): the response is complete. */
    if (c->got < 12) goto failed;
    uint64_t took = now_us() - c->start;
    if (memcmp(c->buf + 9, "2", 1) != 0) w->non2xx++;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 65536;
        w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
    }
    w->lat[w->n++] = took;
    if (SSL_session_reused(c->ssl)) w->reused++;
    if (resume) {
        /* TLS 1.3 tickets arrive after the handshake; by the end of the response they are in.
         * Marked as shut down, or SSL_free would make the session not resumable. */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_SESSION_free(c->sess);
        c->sess = SSL_get1_session(c->ssl);
    }
    finish(c);
    return 1;
want:
    err = SSL_get_error(c->ssl, r);
want_err:
    if (err == SSL_ERROR_WANT_READ) {
        watch(ep, c, EPOLLIN, EPOLL_CTL_MOD);
        return 0;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        watch(ep, c, EPOLLOUT, EPOLL_CTL_MOD);
        return 0;
    }
failed:
    ERR_clear_error();
    w->errors++;
    finish(c);
    return 1;
}

static void *run(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(0);
    struct conn *cs = calloc(w->conns, sizeof *cs);
    struct epoll_event ev[256];
    for (int i = 0; i < w->conns; i++) open_conn(ep, &cs[i], w);
    uint64_t last_scan = now_us();
    for (;;) {
        uint64_t t = now_us();
        if (t >= deadline) break;
        int n = epoll_wait(ep, ev, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = ev[i].data.ptr;
            if (c->fd < 0) continue;
            if (step(ep, c, w) && now_us() < deadline) open_conn(ep, c, w);
        }
        if (now_us() - last_scan > 1000000) {
            last_scan = now_us();
            for (int i = 0; i < w->conns; i++)
                if (cs[i].fd >= 0 && last_scan - cs[i].start > STALL_US) {
                    w->errors++;
                    finish(&cs[i]);
                    open_conn(ep, &cs[i], w);
                }
        }
    }
    for (int i = 0; i < w->conns; i++) {
        finish(&cs[i]);
        SSL_SESSION_free(cs[i].sess);
    }
    free(cs);
    close(ep);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 7 && !(argc == 8 && strcmp(argv[7], "resume") == 0)) {
        fprintf(stderr, "usage: %s HOST PORT PATH CONNECTIONS SECONDS THREADS [resume]\n", argv[0]);
        return 2;
    }
    resume = argc == 8;
    signal(SIGPIPE, SIG_IGN);
    int conns = atoi(argv[4]), seconds = atoi(argv[5]), threads = atoi(argv[6]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    request_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n", argv[3], argv[1], argv[2]);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* loopback, the run's self-signed cert */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!resume) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);

    struct worker *ws = calloc(threads, sizeof *ws);
    uint64_t t0 = now_us();
    deadline = t0 + (uint64_t)seconds * 1000000;
    for (int i = 0; i < threads; i++) {
        ws[i].conns = conns / threads + (i < conns % threads);
        pthread_create(&ws[i].thread, NULL, run, &ws[i]);
    }
    size_t total = 0;
    uint64_t errors = 0, non2xx = 0, reused = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].thread, NULL);
        total += ws[i].n;
        errors += ws[i].errors;
        non2xx += ws[i].non2xx;
        reused += ws[i].reused;
    }
    uint64_t duration = now_us() - t0;
    uint64_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, ws[i].lat, ws[i].n * sizeof *all);
        k += ws[i].n;
    }
    qsort(all, total, sizeof *all, cmp);
#define PCT(p) (total ? all[(size_t)((double)total * (p) / 100.0) < total ? (size_t)((double)total * (p) / 100.0) : total - 1] : 0)
    printf("{\"requests\":%zu,\"duration_us\":%llu,\"errors\":%llu,\"non2xx\":%llu,\"p50\":%llu,\"p99\":%llu,"
           "\"p999\":%llu,\"reused\":%llu,\"tls\":\"%s\"}\n",
           total, (unsigned long long)duration, (unsigned long long)errors, (unsigned long long)non2xx,
           (unsigned long long)PCT(50), (unsigned long long)PCT(99), (unsigned long long)PCT(99.9),
           (unsigned long long)reused, negotiated);
    return 0;
}
