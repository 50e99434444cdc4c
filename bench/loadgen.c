/*
 * loadgen: the HTTP/1.1 load generator of taskgate's benchmark (bench/run.py builds and runs it).
 *
 * One process, one thread, epoll, non-blocking keep-alive sockets, one request in flight per
 * connection (no pipelining). Every request's latency is recorded individually (no histogram,
 * no "correction") and the percentiles are exact order statistics of those raw times.
 *
 *   closed loop:  each connection sends its next request as soon as the previous response
 *                 has been read. Latency = response complete - send time. Measures capacity.
 *   open loop:    connection i of C sends on its own fixed schedule, one request every C/R
 *                 seconds, phases evenly spread so the whole offered load is R req/s. The
 *                 schedule never waits for the server: when a response is late, the requests
 *                 due meanwhile are sent back to back as soon as the connection is free, and
 *                 each one's latency is measured from its INTENDED send time (the time on the
 *                 schedule), so queueing caused by a slow server is charged to the server
 *                 (no coordinated omission).
 *
 * A request fails when: the response status is not 2xx; the connection breaks before the whole
 * response arrived (reset, EOF); it times out (no complete response within --timeout seconds
 * of its send time in closed loop, of its intended time in open loop; then the connection is
 * closed and re-opened); or, in open loop, it was still waiting for its connection --timeout
 * seconds after its intended time (counted as a timeout, never sent). Failed requests enter
 * the percentiles as +infinity (printed as null), so a percentile is never better than what a
 * client saw.
 *
 * Usage: loadgen --port P --tokens FILE --out FILE.json [--host 127.0.0.1] [--connections 1000]
 *        [--mode closed|open] [--rate R] [--duration S] [--warmup S] [--timeout S]
 *        [--mix list=70,create=10,toggle=10,me=10 | healthz=100] [--user-offset N] [--seed N]
 * Tokens file: one line per user: "<token>\t<first task id>\t<number of tasks>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { K_LIST, K_CREATE, K_TOGGLE, K_ME, K_HEALTH, NKINDS };
static const char *KIND_NAMES[NKINDS] = {"list", "create", "toggle", "me", "healthz"};

/* negative "status" codes of failed requests */
#define E_TIMEOUT (-1)     /* no complete response within the timeout */
#define E_CONN (-2)        /* connection broke mid-request (reset / EOF / write error) */
#define E_EXPIRED (-3)     /* open loop: never sent, still queued a timeout after its intended time */
#define E_KA_RACE (-4)     /* a reused keep-alive connection closed before ANY response byte */

enum { S_CONNECTING, S_IDLE, S_WRITING, S_READING, S_BACKOFF, S_DONE };

typedef struct {
    char *token;
    long first_id;
    int ntasks;
} user_t;

typedef struct {
    int64_t ref_ns;  /* intended (open) or send (closed) time, relative to t0 */
    int64_t lat_ns;  /* -1 when failed */
    int16_t code;    /* HTTP status or E_* */
    uint8_t kind;
} rec_t;

typedef struct {
    int fd;
    int idx;
    int state;
    user_t *user;
    uint64_t rng;
    char wbuf[4096];
    int wlen, woff;
    char *rbuf;
    size_t rlen, rcap;
    int kind;
    int64_t ref_ns;      /* absolute monotonic ns of the request in flight (intended or sent) */
    int64_t sent_ns;
    int64_t next_ns;     /* open loop: absolute intended time of the next request */
    int64_t backoff_until;
    int responses;       /* responses read on this TCP connection (>0: reused keep-alive) */
    int in_flight;
    /* response parsing */
    int hdr_done, status, chunked, close_after, until_eof;
    long content_length;
    size_t body_start;
} conn_t;

/* ---- options ---- */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_conns = 1000;
static int opt_open = 0;
static double opt_rate = 0;
static double opt_duration = 10, opt_warmup = 2, opt_timeout = 10;
static const char *opt_tokens = NULL, *opt_out = NULL;
static int opt_mix[NKINDS] = {70, 10, 10, 10, 0};
static long opt_user_offset = 0;
static uint64_t opt_seed = 42;

/* ---- state ---- */
static user_t *users;
static long nusers;
static conn_t *conns;
static int epfd, tfd;
static struct sockaddr_in addr;
static int64_t t0, t_end, t_drain;
static int64_t period_ns;
static rec_t *recs;
static size_t nrecs, caprecs;
static long n_connect_err, n_reconnects, n_idle_closed, n_server_close, n_created;
static long *tl_ok, *tl_err;
static int tl_len;
static char hostheader[128];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void die(const char *msg) {
    perror(msg);
    exit(2);
}

static void record(conn_t *c, int64_t ref_abs, int64_t lat, int code, int kind) {
    int64_t done_abs = lat >= 0 ? ref_abs + lat : now_ns();
    int sec = (int)((done_abs - t0) / 1000000000LL);
    if (sec >= 0 && sec < tl_len) {
        if (code >= 200 && code < 300) tl_ok[sec]++; else tl_err[sec]++;
    }
    (void)c;
    if (nrecs == caprecs) {
        caprecs = caprecs ? caprecs * 2 : 65536;
        recs = realloc(recs, caprecs * sizeof(rec_t));
        if (!recs) die("realloc");
    }
    recs[nrecs].ref_ns = ref_abs - t0;
    recs[nrecs].lat_ns = lat;
    recs[nrecs].code = (int16_t)code;
    recs[nrecs].kind = (uint8_t)kind;
    nrecs++;
}

/* ---- connections ---- */
static void ep_set(conn_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void conn_open(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->responses = 0;
    c->in_flight = 0;
    c->rlen = 0;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        n_connect_err++;
        close(c->fd);
        c->fd = -1;
        c->state = S_BACKOFF;
        c->backoff_until = now_ns() + 100000000LL;
        return;
    }
    c->state = S_CONNECTING;
    ep_set(c, EPOLLOUT | EPOLLIN, EPOLL_CTL_ADD);
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_reopen(conn_t *c) {
    conn_close(c);
    n_reconnects++;
    conn_open(c);
}

/* a request in flight failed: record it, drop the connection, open a new one */
static void fail_request(conn_t *c, int code) {
    if (c->in_flight) {
        if (code == E_CONN && c->responses > 0 && c->rlen == 0) code = E_KA_RACE;
        record(c, c->ref_ns, -1, code, c->kind);
        c->in_flight = 0;
    }
    conn_reopen(c);
}

static int pick_kind(conn_t *c) {
    int total = 0;
    for (int k = 0; k < NKINDS; k++) total += opt_mix[k];
    int r = (int)(xorshift(&c->rng) % (uint64_t)total);
    for (int k = 0; k < NKINDS; k++) {
        if (r < opt_mix[k]) return k;
        r -= opt_mix[k];
    }
    return K_LIST;
}

static void build_request(conn_t *c) {
    user_t *u = c->user;
    int k = c->kind;
    int n = 0;
    switch (k) {
    case K_LIST:
        n = snprintf(c->wbuf, sizeof c->wbuf,
                     "GET /api/v1/tasks?limit=20 HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Accept: application/json\r\nUser-Agent: taskgate-loadgen\r\n\r\n",
                     hostheader, u->token);
        break;
    case K_CREATE: {
        char body[128];
        int bl = snprintf(body, sizeof body, "{\"title\": \"load test task %ld-%ld\"}", (long)c->idx, ++n_created);
        n = snprintf(c->wbuf, sizeof c->wbuf,
                     "POST /api/v1/tasks HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Accept: application/json\r\nUser-Agent: taskgate-loadgen\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     hostheader, u->token, bl, body);
        break;
    }
    case K_TOGGLE: {
        long id = u->first_id + (long)(xorshift(&c->rng) % (uint64_t)(u->ntasks > 0 ? u->ntasks : 1));
        n = snprintf(c->wbuf, sizeof c->wbuf,
                     "PATCH /api/v1/tasks/%ld/complete HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Accept: application/json\r\nUser-Agent: taskgate-loadgen\r\nContent-Length: 0\r\n\r\n",
                     id, hostheader, u->token);
        break;
    }
    case K_ME:
        n = snprintf(c->wbuf, sizeof c->wbuf,
                     "GET /api/v1/auth/me HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                     "Accept: application/json\r\nUser-Agent: taskgate-loadgen\r\n\r\n",
                     hostheader, u->token);
        break;
    default:
        n = snprintf(c->wbuf, sizeof c->wbuf,
                     "GET /healthz HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
                     "User-Agent: taskgate-loadgen\r\n\r\n",
                     hostheader);
    }
    if (n <= 0 || n >= (int)sizeof c->wbuf) {
        fprintf(stderr, "request too long\n");
        exit(2);
    }
    c->wlen = n;
    c->woff = 0;
}

static void try_write(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t w = send(c->fd, c->wbuf + c->woff, (size_t)(c->wlen - c->woff), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
                c->state = S_WRITING;
                return;
            }
            fail_request(c, E_CONN);
            return;
        }
        c->woff += (int)w;
    }
    if (c->state == S_WRITING) ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
    c->state = S_READING;
}

/* send one request with reference time ref (absolute ns) */
static void send_request(conn_t *c, int64_t ref, int64_t now) {
    c->kind = pick_kind(c);
    build_request(c);
    c->ref_ns = ref;
    c->sent_ns = now;
    c->in_flight = 1;
    c->rlen = 0;
    c->hdr_done = 0;
    c->state = S_READING;  /* try_write flips to S_WRITING when the socket is full */
    try_write(c);
}

/* ---- open loop: min-heap of (scheduled time, connection) for idle connections ---- */
typedef struct {
    int64_t key;
    int idx;
} heap_item_t;
static heap_item_t *heap;
static size_t heap_len, heap_cap;

static void heap_push(int64_t key, int idx) {
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 4096;
        heap = realloc(heap, heap_cap * sizeof *heap);
        if (!heap) die("realloc");
    }
    size_t i = heap_len++;
    while (i > 0 && heap[(i - 1) / 2].key > key) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i].key = key;
    heap[i].idx = idx;
}

static heap_item_t heap_pop(void) {
    heap_item_t top = heap[0], last = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < heap_len && heap[l].key < last.key) m = l;
        if (l + 1 < heap_len && heap[l + 1].key < (m == i ? last.key : heap[m].key)) m = l + 1;
        if (m == i) break;
        heap[i] = heap[m];
        i = m;
    }
    if (heap_len) heap[i] = last;
    return top;
}

/* decide what an idle, connected connection does now */
static void drive(conn_t *c, int64_t now) {
    if (c->state != S_IDLE) return;
    if (!opt_open) {
        if (now < t_end) send_request(c, now, now);
        else c->state = S_DONE;
        return;
    }
    int64_t limit = (int64_t)(opt_timeout * 1e9);
    while (c->next_ns < t_end && c->next_ns <= now && now - c->next_ns > limit) {
        /* the client gave up on this one before it could even be sent */
        record(c, c->next_ns, -1, E_EXPIRED, pick_kind(c));
        c->next_ns += period_ns;
    }
    if (c->next_ns >= t_end) {
        c->state = S_DONE;
        return;
    }
    if (c->next_ns <= now) {
        int64_t ref = c->next_ns;
        c->next_ns += period_ns;
        send_request(c, ref, now);
        return;
    }
    heap_push(c->next_ns, c->idx);  /* stays S_IDLE; the timer wakes us at next_ns */
}

/* ---- response parsing ---- */
static int chunked_done(const char *p, size_t len) {
    size_t i = 0;
    for (;;) {
        const char *eol = memmem(p + i, len - i, "\r\n", 2);
        if (!eol) return 0;
        long size = strtol(p + i, NULL, 16);
        i = (size_t)(eol - p) + 2;
        if (size == 0) return memmem(p + i - 2, len - (i - 2), "\r\n\r\n", 4) != NULL;
        if (len < i + (size_t)size + 2) return 0;
        i += (size_t)size + 2;
    }
}

static void parse_headers(conn_t *c, const char *end) {
    const char *p = c->rbuf;
    c->status = 0;
    c->content_length = -1;
    c->chunked = 0;
    c->close_after = 0;
    c->until_eof = 0;
    if (c->rlen > 12 && !strncmp(p, "HTTP/1.", 7)) c->status = atoi(p + 9);
    if (!strncmp(p, "HTTP/1.0", 8)) c->close_after = 1;
    const char *line = memmem(p, (size_t)(end - p), "\r\n", 2);
    while (line && line < end) {
        line += 2;
        const char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        if (!eol) break;
        size_t ll = (size_t)(eol - line);
        if (ll > 15 && !strncasecmp(line, "content-length:", 15)) c->content_length = atol(line + 15);
        else if (ll > 18 && !strncasecmp(line, "transfer-encoding:", 18) && memmem(line, ll, "chunked", 7))
            c->chunked = 1;
        else if (ll > 11 && !strncasecmp(line, "connection:", 11)) {
            if (memmem(line, ll, "close", 5)) c->close_after = 1;
            if (memmem(line, ll, "keep-alive", 10)) c->close_after = 0;
        }
        line = eol;
    }
    if (!c->chunked && c->content_length < 0 && c->status != 204 && c->status != 304) c->until_eof = 1;
}

static void response_complete(conn_t *c, int64_t now) {
    record(c, c->ref_ns, now - c->ref_ns, c->status, c->kind);
    c->in_flight = 0;
    c->responses++;
    c->rlen = 0;
    if (c->close_after) {
        n_server_close++;
        conn_reopen(c);
        return;
    }
    c->state = S_IDLE;
    drive(c, now);
}

static void on_readable(conn_t *c, int64_t now) {
    for (;;) {
        if (c->rcap - c->rlen < 4096) {
            c->rcap *= 2;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf) die("realloc");
        }
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1, 0);
        if (r < 0) {
            if (errno == EAGAIN) return;
            if (c->in_flight) fail_request(c, E_CONN);
            else { n_idle_closed++; conn_reopen(c); }
            return;
        }
        if (r == 0) {
            if (c->in_flight && c->hdr_done && c->until_eof) {
                c->close_after = 1;  /* close-delimited body: complete, then reconnect */
                response_complete(c, now);
                return;
            }
            if (c->in_flight) fail_request(c, E_CONN);
            else { n_idle_closed++; conn_reopen(c); }
            return;
        }
        if (!c->in_flight) continue;  /* unsolicited bytes: ignore */
        c->rlen += (size_t)r;
        c->rbuf[c->rlen] = 0;
        if (!c->hdr_done) {
            char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
            if (!end) continue;
            parse_headers(c, end);
            c->hdr_done = 1;
            c->body_start = (size_t)(end - c->rbuf) + 4;
        }
        int done = 0;
        if (c->chunked) done = chunked_done(c->rbuf + c->body_start, c->rlen - c->body_start);
        else if (c->content_length >= 0) done = c->rlen - c->body_start >= (size_t)c->content_length;
        else if (!c->until_eof) done = 1;
        if (done) {
            response_complete(c, now);
            return;
        }
    }
}

static void on_connected(conn_t *c, int64_t now) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        n_connect_err++;
        conn_close(c);
        c->state = S_BACKOFF;
        c->backoff_until = now + 100000000LL;
        return;
    }
    ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
    c->state = S_IDLE;
    if (t0) drive(c, now);
}

static void handle_event(conn_t *c, uint32_t events, int64_t now) {
    if (c->fd < 0) return;
    if (c->state == S_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c, now);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        on_readable(c, now);
        if (c->fd < 0 || c->state == S_CONNECTING) return;
    }
    if ((events & EPOLLOUT) && c->state == S_WRITING) try_write(c);
}

/* ---- tokens ---- */
static void load_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 1024;
    users = malloc(cap * sizeof *users);
    char *line = NULL;
    size_t n = 0;
    while (getline(&line, &n, f) > 0) {
        char *tok = strtok(line, "\t\n");
        char *first = strtok(NULL, "\t\n");
        char *count = strtok(NULL, "\t\n");
        if (!tok) continue;
        if ((size_t)nusers == cap) users = realloc(users, (cap *= 2) * sizeof *users);
        users[nusers].token = strdup(tok);
        users[nusers].first_id = first ? atol(first) : 1;
        users[nusers].ntasks = count ? atoi(count) : 1;
        nusers++;
    }
    free(line);
    fclose(f);
    if (!nusers) {
        fprintf(stderr, "no tokens in %s\n", path);
        exit(2);
    }
}

static void parse_mix(const char *s) {
    memset(opt_mix, 0, sizeof opt_mix);
    char *copy = strdup(s), *save = NULL;
    for (char *part = strtok_r(copy, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(part, '=');
        if (!eq) { fprintf(stderr, "bad --mix %s\n", s); exit(2); }
        *eq = 0;
        int k;
        for (k = 0; k < NKINDS; k++) if (!strcmp(part, KIND_NAMES[k])) break;
        if (k == NKINDS) { fprintf(stderr, "unknown kind %s\n", part); exit(2); }
        opt_mix[k] = atoi(eq + 1);
    }
    free(copy);
}

/* ---- statistics ---- */
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_pct(FILE *o, const char *name, int64_t *v, size_t n, double q, int last) {
    if (!n) { fprintf(o, "\"%s\": null%s", name, last ? "" : ", "); return; }
    size_t i = (size_t)(q * (double)n + 0.999999999);
    if (i < 1) i = 1;
    if (i > n) i = n;
    int64_t x = v[i - 1];
    if (x == INT64_MAX) fprintf(o, "\"%s\": null%s", name, last ? "" : ", ");
    else fprintf(o, "\"%s\": %.3f%s", name, (double)x / 1e6, last ? "" : ", ");
}

/* one summary object over the records of the window matching kind (or all when kind < 0) */
static void summary(FILE *o, int kind, int64_t ws, int64_t we, double dur) {
    size_t n = 0, ok = 0, timeouts = 0, expired = 0, connerr = 0, karace = 0, http_err = 0, done_in_window = 0,
           ok_done_in_window = 0;
    int64_t *lat = malloc((nrecs + 1) * sizeof *lat), *latok = malloc((nrecs + 1) * sizeof *latok);
    size_t nok = 0;
    long statuses[600] = {0};
    double sum = 0;
    for (size_t i = 0; i < nrecs; i++) {
        rec_t *r = &recs[i];
        if (kind >= 0 && r->kind != kind) continue;
        if (r->lat_ns >= 0) {
            int64_t done = r->ref_ns + r->lat_ns;
            if (done >= ws && done < we) {
                done_in_window++;
                if (r->code >= 200 && r->code < 300) ok_done_in_window++;
            }
        }
        if (r->ref_ns < ws || r->ref_ns >= we) continue;
        n++;
        if (r->lat_ns >= 0) {
            lat[n - 1] = r->lat_ns;
            sum += (double)r->lat_ns;
            if (r->code >= 200 && r->code < 300) { ok++; latok[nok++] = r->lat_ns; }
            else http_err++;
            if (r->code > 0 && r->code < 600) statuses[r->code]++;
        } else {
            lat[n - 1] = INT64_MAX;
            if (r->code == E_TIMEOUT) timeouts++;
            else if (r->code == E_EXPIRED) expired++;
            else if (r->code == E_KA_RACE) karace++;
            else connerr++;
        }
    }
    qsort(lat, n, sizeof *lat, cmp_i64);
    qsort(latok, nok, sizeof *latok, cmp_i64);
    fprintf(o, "{\"requests\": %zu, \"ok\": %zu, \"http_errors\": %zu, \"timeouts\": %zu, \"expired_unsent\": %zu, "
               "\"conn_errors\": %zu, \"keepalive_races\": %zu, \"errors\": %zu, ",
            n, ok, http_err, timeouts, expired, connerr, karace, n - ok);
    fprintf(o, "\"completed_per_s\": %.2f, \"ok_per_s\": %.2f, ", (double)done_in_window / dur,
            (double)ok_done_in_window / dur);
    fprintf(o, "\"statuses\": {");
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (statuses[s]) { fprintf(o, "%s\"%d\": %ld", first ? "" : ", ", s, statuses[s]); first = 0; }
    fprintf(o, "}, \"latency_ms\": {");
    print_pct(o, "p50", lat, n, 0.50, 0);
    print_pct(o, "p90", lat, n, 0.90, 0);
    print_pct(o, "p95", lat, n, 0.95, 0);
    print_pct(o, "p99", lat, n, 0.99, 0);
    print_pct(o, "p999", lat, n, 0.999, 0);
    print_pct(o, "max", lat, n, 1.0, 0);
    fprintf(o, "\"mean_completed\": %.3f}, \"latency_ok_ms\": {", n > (timeouts + expired + connerr + karace)
            ? sum / (double)(n - timeouts - expired - connerr - karace) / 1e6 : 0.0);
    print_pct(o, "p50", latok, nok, 0.50, 0);
    print_pct(o, "p95", latok, nok, 0.95, 0);
    print_pct(o, "p99", latok, nok, 0.99, 0);
    print_pct(o, "max", latok, nok, 1.0, 1);
    fprintf(o, "}}");
    free(lat);
    free(latok);
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --port P --tokens FILE --out FILE [--host H] [--connections N] "
                    "[--mode closed|open] [--rate R] [--duration S] [--warmup S] [--timeout S] "
                    "[--mix list=70,create=10,toggle=10,me=10] [--user-offset N] [--seed N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--host")) opt_host = v;
        else if (ARG("--port")) opt_port = atoi(v);
        else if (ARG("--connections")) opt_conns = atoi(v);
        else if (ARG("--mode")) opt_open = !strcmp(v, "open");
        else if (ARG("--rate")) opt_rate = atof(v);
        else if (ARG("--duration")) opt_duration = atof(v);
        else if (ARG("--warmup")) opt_warmup = atof(v);
        else if (ARG("--timeout")) opt_timeout = atof(v);
        else if (ARG("--tokens")) opt_tokens = v;
        else if (ARG("--out")) opt_out = v;
        else if (ARG("--mix")) parse_mix(v);
        else if (ARG("--user-offset")) opt_user_offset = atol(v);
        else if (ARG("--seed")) opt_seed = strtoull(v, NULL, 10);
        else usage();
    }
    if (!opt_port || !opt_tokens || !opt_out || opt_conns < 1 || (opt_open && opt_rate <= 0)) usage();
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)opt_conns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    load_tokens(opt_tokens);
    snprintf(hostheader, sizeof hostheader, "%s:%d", opt_host, opt_port);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1) die("inet_pton");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) die("epoll/timerfd");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    conns = calloc((size_t)opt_conns, sizeof *conns);
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        c->idx = i;
        c->fd = -1;
        c->user = &users[(opt_user_offset + i) % nusers];
        c->rng = opt_seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL + 1;
        c->rcap = 16384;
        c->rbuf = malloc(c->rcap);
        conn_open(c);
    }

    /* open every connection before the clock starts (bounded: 10 s) */
    int64_t connect_deadline = now_ns() + 10000000000LL;
    struct epoll_event evs[512];
    for (;;) {
        int connected = 0;
        for (int i = 0; i < opt_conns; i++) connected += conns[i].state == S_IDLE;
        if (connected == opt_conns || now_ns() > connect_deadline) break;
        int n = epoll_wait(epfd, evs, 512, 10);
        int64_t now = now_ns();
        for (int j = 0; j < n; j++)
            if (evs[j].data.ptr) handle_event(evs[j].data.ptr, evs[j].events, now);
        for (int i = 0; i < opt_conns; i++)
            if (conns[i].state == S_BACKOFF && now >= conns[i].backoff_until) conn_open(&conns[i]);
    }
    int connected_at_start = 0;
    for (int i = 0; i < opt_conns; i++) connected_at_start += conns[i].state == S_IDLE;

    t0 = now_ns();
    t_end = t0 + (int64_t)((opt_warmup + opt_duration) * 1e9);
    t_drain = t_end + (int64_t)(opt_timeout * 1e9) + 200000000LL;
    tl_len = (int)(opt_warmup + opt_duration + opt_timeout) + 2;
    tl_ok = calloc((size_t)tl_len, sizeof(long));
    tl_err = calloc((size_t)tl_len, sizeof(long));
    if (opt_open) {
        period_ns = (int64_t)((double)opt_conns / opt_rate * 1e9);
        for (int i = 0; i < opt_conns; i++)
            conns[i].next_ns = t0 + (int64_t)((double)period_ns * i / opt_conns);
    }
    for (int i = 0; i < opt_conns; i++) drive(&conns[i], t0);

    int64_t limit = (int64_t)(opt_timeout * 1e9);
    int64_t last_sweep = 0;
    for (;;) {
        int64_t now = now_ns();
        /* earliest wake-up: next scheduled send of an idle connection, or a reconnect backoff */
        /* wake at the next scheduled send (heap top), or in 10 ms for the timeout sweep */
        int64_t wake = now + 10000000LL;
        if (heap_len && heap[0].key < wake) wake = heap[0].key;
        if (now >= t_end) {
            /* after the window: stop when nothing that belongs to it is outstanding */
            int outstanding = 0;
            for (int i = 0; i < opt_conns && !outstanding; i++) {
                conn_t *c = &conns[i];
                if (c->in_flight || (opt_open && c->state != S_DONE && c->next_ns < t_end)) outstanding = 1;
            }
            if (!outstanding || now >= t_drain) break;
        }
        if (wake <= now) wake = now + 1;
        struct itimerspec its = {0};
        its.it_value.tv_sec = wake / 1000000000LL;
        its.it_value.tv_nsec = wake % 1000000000LL;
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        int n = epoll_wait(epfd, evs, 512, 50);
        now = now_ns();
        for (int j = 0; j < n; j++) {
            if (!evs[j].data.ptr) {
                uint64_t x;
                ssize_t rr = read(tfd, &x, sizeof x);
                (void)rr;
                continue;
            }
            handle_event(evs[j].data.ptr, evs[j].events, now);
        }
        /* open loop: every connection whose scheduled time has come */
        while (heap_len && heap[0].key <= now) {
            heap_item_t it = heap_pop();
            conn_t *c = &conns[it.idx];
            if (c->state == S_IDLE && c->next_ns == it.key) drive(c, now);
        }
        if (now - last_sweep > 10000000LL) {  /* every 10 ms: timeouts, reconnect backoffs */
            last_sweep = now;
            for (int i = 0; i < opt_conns; i++) {
                conn_t *c = &conns[i];
                if (c->in_flight && now - c->ref_ns > limit) fail_request(c, E_TIMEOUT);
                else if (c->state == S_BACKOFF && now >= c->backoff_until) conn_open(c);
                else if (c->state == S_IDLE && (!opt_open || c->next_ns <= now)) drive(c, now);
            }
        }
    }
    /* anything of the window still outstanding at the drain deadline failed */
    int64_t now = now_ns();
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        if (c->in_flight) {
            record(c, c->ref_ns, -1, E_TIMEOUT, c->kind);
            c->in_flight = 0;
        }
        if (opt_open)
            while (c->state != S_DONE && c->next_ns < t_end) {
                record(c, c->next_ns, -1, E_EXPIRED, pick_kind(c));
                c->next_ns += period_ns;
            }
        conn_close(c);
    }
    (void)now;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    int64_t ws = (int64_t)(opt_warmup * 1e9), we = ws + (int64_t)(opt_duration * 1e9);

    FILE *o = fopen(opt_out, "w");
    if (!o) die(opt_out);
    struct timespec mono;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    fprintf(o, "{\"mode\": \"%s\", \"rate\": %.3f, \"connections\": %d, \"connected_at_start\": %d, "
               "\"duration_s\": %.3f, \"warmup_s\": %.3f, \"timeout_s\": %.3f, ",
            opt_open ? "open" : "closed", opt_rate, opt_conns, connected_at_start, opt_duration, opt_warmup,
            opt_timeout);
    fprintf(o, "\"t0_monotonic\": %.6f, \"window_monotonic\": [%.6f, %.6f], ", (double)t0 / 1e9,
            (double)(t0 + ws) / 1e9, (double)(t0 + we) / 1e9);
    fprintf(o, "\"mix\": {");
    for (int k = 0; k < NKINDS; k++) fprintf(o, "%s\"%s\": %d", k ? ", " : "", KIND_NAMES[k], opt_mix[k]);
    fprintf(o, "}, \"users\": %ld, \"connect_errors\": %ld, \"reconnects\": %ld, \"idle_closed_by_server\": %ld, "
               "\"closed_by_server_after_response\": %ld, \"client_cpu_s\": %.3f, ",
            nusers, n_connect_err, n_reconnects, n_idle_closed, n_server_close, cpu);
    fprintf(o, "\"all\": ");
    summary(o, -1, ws, we, opt_duration);
    fprintf(o, ", \"by_kind\": {");
    int first = 1;
    for (int k = 0; k < NKINDS; k++) {
        if (!opt_mix[k]) continue;
        fprintf(o, "%s\"%s\": ", first ? "" : ", ", KIND_NAMES[k]);
        summary(o, k, ws, we, opt_duration);
        first = 0;
    }
    fprintf(o, "}, \"timeline_ok\": [");
    for (int s = 0; s < tl_len; s++) fprintf(o, "%s%ld", s ? ", " : "", tl_ok[s]);
    fprintf(o, "], \"timeline_err\": [");
    for (int s = 0; s < tl_len; s++) fprintf(o, "%s%ld", s ? ", " : "", tl_err[s]);
    fprintf(o, "]}\n");
    fclose(o);
    return 0;
}
