/*
 * Closed-loop MQTT v5 request/reply load generator (libmosquitto).
 *
 *   loadgen HOST PORT TOPIC QOS INFLIGHT PAYLOAD_SIZE WARMUP_S DURATION_S
 *
 * One connection.  It subscribes to a reply topic of its own (bench/replies/<unique>), then
 * keeps INFLIGHT requests outstanding on TOPIC: each request carries the MQTT v5 Response
 * Topic (the reply topic) and Correlation Data (an 8-byte big-endian sequence number), and
 * each reply matched by its correlation data sends the next request in the same "lane".
 * Lane i carries sequence numbers i, i+INFLIGHT, i+2*INFLIGHT, ... so a reply's lane is
 * seq % INFLIGHT and a stale, duplicate or foreign reply is recognised and counted as an
 * error.  A request unanswered after REQUEST_TIMEOUT_S is counted as an error (and as a
 * timeout) and replaced by a new one in its lane.
 *
 * Replies received during the first WARMUP_S seconds are not counted; replies received in
 * the following DURATION_S seconds are.  Latency is send -> reply, on CLOCK_MONOTONIC.
 * Prints one JSON line on stdout:
 *   {"msgs_per_s":..., "p50_ms":..., "p99_ms":..., "count":..., "errors":..., ...}
 * Exit status: 0 if the run completed (even with errors), 2 on a usage/connection failure.
 *
 *   loadgen echo HOST PORT TOPIC
 *
 * A minimal C echo server (same protocol as bench/raw_echo.py), used only to check how fast
 * the load generator and the broker go without a Python echo in the loop.
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_TIMEOUT_S 5.0
#define CONNECT_TIMEOUT_S 10.0
#define DRAIN_TIMEOUT_S 2.0

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

enum phase { PH_CONNECTING, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };

struct lane {
    uint64_t seq;
    uint64_t sent_ns;
    bool active;
};

struct state {
    const char *topic;
    int qos;
    int inflight;
    char *payload;
    int payload_size;
    char reply_topic[128];
    uint64_t warmup_ns, duration_ns;

    enum phase phase;
    uint64_t start_ns, t0_ns, t1_ns, drain_ns, connect_deadline_ns;
    double cpu_t0, cpu_t1;

    struct lane *lanes;
    uint64_t *lat; /* latencies (ns) of replies received in the measured window */
    size_t nlat, caplat;
    uint64_t errors, timeouts, stale, publish_errors, warmup_replies, drained_replies;
    bool fatal;
    char fatal_msg[200];
};

static void fail(struct state *st, const char *msg)
{
    if (!st->fatal) {
        st->fatal = true;
        snprintf(st->fatal_msg, sizeof st->fatal_msg, "%s", msg);
    }
}

static void record(struct state *st, uint64_t lat)
{
    if (st->nlat == st->caplat) {
        size_t cap = st->caplat ? st->caplat * 2 : 65536;
        uint64_t *p = realloc(st->lat, cap * sizeof *p);
        if (!p) {
            fail(st, "out of memory");
            return;
        }
        st->lat = p;
        st->caplat = cap;
    }
    st->lat[st->nlat++] = lat;
}

static void send_request(struct mosquitto *mosq, struct state *st, int i)
{
    struct lane *ln = &st->lanes[i];
    unsigned char corr[8];
    uint64_t seq = ln->seq;
    for (int b = 7; b >= 0; b--) {
        corr[b] = (unsigned char)(seq & 0xff);
        seq >>= 8;
    }
    mosquitto_property *props = NULL;
    if (mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, st->reply_topic) ||
        mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, sizeof corr)) {
        mosquitto_property_free_all(&props);
        fail(st, "cannot build request properties");
        return;
    }
    ln->sent_ns = now_ns();
    ln->active = true;
    int rc = mosquitto_publish_v5(mosq, NULL, st->topic, st->payload_size, st->payload, st->qos,
                                  false, props);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        /* Counted; the lane stays active and is retried by the request timeout. */
        st->errors++;
        st->publish_errors++;
    }
}

/* Advance the phase from the clock; returns the current time. */
static uint64_t tick(struct state *st)
{
    uint64_t t = now_ns();
    if (st->phase == PH_WARMUP && t >= st->t0_ns) {
        st->phase = PH_MEASURE;
        st->cpu_t0 = cpu_seconds();
    }
    if (st->phase == PH_MEASURE && t >= st->t1_ns) {
        st->phase = PH_DRAIN;
        st->cpu_t1 = cpu_seconds();
        st->drain_ns = t + (uint64_t)(DRAIN_TIMEOUT_S * 1e9);
    }
    return t;
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    struct state *st = obj;
    uint64_t t = tick(st);
    void *corr = NULL;
    uint16_t len = 0;
    if (!mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &len, false) ||
        len != 8) {
        free(corr);
        st->errors++;
        st->stale++;
        return;
    }
    uint64_t seq = 0;
    for (int b = 0; b < 8; b++) seq = (seq << 8) | ((unsigned char *)corr)[b];
    free(corr);
    int i = (int)(seq % (uint64_t)st->inflight);
    struct lane *ln = &st->lanes[i];
    if (!ln->active || ln->seq != seq) {
        st->errors++;
        st->stale++;
        return;
    }
    (void)msg;
    ln->active = false;
    if (st->phase == PH_MEASURE) {
        record(st, t - ln->sent_ns);
    } else if (st->phase == PH_WARMUP) {
        st->warmup_replies++;
    } else {
        st->drained_replies++;
    }
    if (st->phase == PH_WARMUP || st->phase == PH_MEASURE) {
        ln->seq += (uint64_t)st->inflight;
        send_request(mosq, st, i);
    }
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count,
                         const int *granted, const mosquitto_property *props)
{
    struct state *st = obj;
    (void)mid;
    (void)props;
    if (count < 1 || granted[0] > 2) {
        fail(st, "subscription to the reply topic refused");
        return;
    }
    if (st->phase != PH_CONNECTING) return;
    st->start_ns = now_ns();
    st->t0_ns = st->start_ns + st->warmup_ns;
    st->t1_ns = st->t0_ns + st->duration_ns;
    st->phase = PH_WARMUP;
    tick(st);
    for (int i = 0; i < st->inflight; i++) send_request(mosq, st, i);
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    struct state *st = obj;
    (void)flags;
    (void)props;
    if (rc != 0) {
        char buf[160];
        snprintf(buf, sizeof buf, "connection refused: %s", mosquitto_reason_string(rc));
        fail(st, buf);
        return;
    }
    /* Subscribe at QoS 2 so replies arrive at whatever QoS the echo server publishes them. */
    if (mosquitto_subscribe_v5(mosq, NULL, st->reply_topic, 2, 0, NULL) != MOSQ_ERR_SUCCESS)
        fail(st, "cannot subscribe to the reply topic");
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc, const mosquitto_property *p)
{
    struct state *st = obj;
    (void)mosq;
    (void)p;
    if (st->phase != PH_DONE) {
        char buf[160];
        snprintf(buf, sizeof buf, "disconnected during the run: %s",
                 rc > 127 ? mosquitto_reason_string(rc) : mosquitto_strerror(rc));
        fail(st, buf);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const uint64_t *v, size_t n, double q)
{
    if (n == 0) return 0.0;
    /* nearest rank: the smallest k with k >= q * n */
    double x = q * (double)n;
    size_t k = (size_t)x;
    if ((double)k < x) k++;
    if (k < 1) k = 1;
    if (k > n) k = n;
    return (double)v[k - 1] / 1e6;
}

static struct mosquitto *make_client(const char *prefix, void *obj)
{
    char id[64];
    snprintf(id, sizeof id, "%s-%ld-%llu", prefix, (long)getpid(),
             (unsigned long long)(now_ns() % 1000000007ull));
    struct mosquitto *mosq = mosquitto_new(id, true, obj);
    if (!mosq) return NULL;
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* Both default to 20; the broker's own Receive Maximum still caps what we send. */
    mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, 65535);
    mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    return mosq;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: loadgen HOST PORT TOPIC QOS INFLIGHT PAYLOAD_SIZE WARMUP_S DURATION_S\n"
            "       loadgen echo HOST PORT TOPIC\n");
    return 2;
}

/* ---------------------------------------------------------------- C echo server */

static volatile sig_atomic_t stop_echo;

static void on_stop(int sig)
{
    (void)sig;
    stop_echo = 1;
}

static void echo_on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                            const mosquitto_property *props)
{
    (void)flags;
    (void)props;
    if (rc != 0) {
        fprintf(stderr, "loadgen echo: connection refused: %s\n", mosquitto_reason_string(rc));
        stop_echo = 1;
        return;
    }
    mosquitto_subscribe_v5(mosq, NULL, (const char *)obj, 2, 0, NULL);
}

static void echo_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                            const mosquitto_property *props)
{
    (void)obj;
    char *rt = NULL;
    void *corr = NULL;
    uint16_t len = 0;
    if (!mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &rt, false)) return;
    mosquitto_property *out = NULL;
    if (mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &len, false))
        mosquitto_property_add_binary(&out, MQTT_PROP_CORRELATION_DATA, corr, len);
    mosquitto_publish_v5(mosq, NULL, rt, msg->payloadlen, msg->payload, msg->qos, false, out);
    mosquitto_property_free_all(&out);
    free(corr);
    free(rt);
}

static int run_echo(int argc, char **argv)
{
    if (argc != 5) return usage();
    char *topic = argv[4];
    struct mosquitto *mosq = make_client("bench-c-echo", topic);
    if (!mosq) return 2;
    mosquitto_connect_v5_callback_set(mosq, echo_on_connect);
    mosquitto_message_v5_callback_set(mosq, echo_on_message);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    if (mosquitto_connect_bind_v5(mosq, argv[2], atoi(argv[3]), 60, NULL, NULL)) {
        fprintf(stderr, "loadgen echo: cannot connect to %s:%s\n", argv[2], argv[3]);
        return 2;
    }
    while (!stop_echo) {
        int rc = mosquitto_loop(mosq, 200, 1);
        if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
            fprintf(stderr, "loadgen echo: %s\n", mosquitto_strerror(rc));
            break;
        }
    }
    mosquitto_disconnect_v5(mosq, 0, NULL);
    mosquitto_destroy(mosq);
    return 0;
}

/* ---------------------------------------------------------------- load generator */

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "echo") == 0) {
        mosquitto_lib_init();
        int rc = run_echo(argc, argv);
        mosquitto_lib_cleanup();
        return rc;
    }
    if (argc != 9) return usage();

    struct state st;
    memset(&st, 0, sizeof st);
    const char *host = argv[1];
    int port = atoi(argv[2]);
    st.topic = argv[3];
    st.qos = atoi(argv[4]);
    st.inflight = atoi(argv[5]);
    st.payload_size = atoi(argv[6]);
    double warmup = atof(argv[7]), duration = atof(argv[8]);
    if (port <= 0 || st.qos < 0 || st.qos > 2 || st.inflight < 1 || st.inflight > 65535 ||
        st.payload_size < 0 || warmup < 0 || duration <= 0)
        return usage();
    st.warmup_ns = (uint64_t)(warmup * 1e9);
    st.duration_ns = (uint64_t)(duration * 1e9);
    st.lanes = calloc((size_t)st.inflight, sizeof *st.lanes);
    st.payload = malloc((size_t)st.payload_size + 1);
    if (!st.lanes || !st.payload) return 2;
    memset(st.payload, 'x', (size_t)st.payload_size); /* ASCII: a handler may decode it */
    for (int i = 0; i < st.inflight; i++) st.lanes[i].seq = (uint64_t)i;
    snprintf(st.reply_topic, sizeof st.reply_topic, "bench/replies/%ld-%llu", (long)getpid(),
             (unsigned long long)(now_ns() % 1000000007ull));

    /* Hard bound on the whole run, whatever happens to the broker or the echo server. */
    alarm((unsigned)(CONNECT_TIMEOUT_S + warmup + duration + DRAIN_TIMEOUT_S + 10));

    mosquitto_lib_init();
    struct mosquitto *mosq = make_client("bench-loadgen", &st);
    if (!mosq) return 2;
    mosquitto_connect_v5_callback_set(mosq, on_connect);
    mosquitto_subscribe_v5_callback_set(mosq, on_subscribe);
    mosquitto_message_v5_callback_set(mosq, on_message);
    mosquitto_disconnect_v5_callback_set(mosq, on_disconnect);

    st.phase = PH_CONNECTING;
    st.connect_deadline_ns = now_ns() + (uint64_t)(CONNECT_TIMEOUT_S * 1e9);
    int rc = mosquitto_connect_bind_v5(mosq, host, port, 60, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        printf("{\"error\": \"cannot connect to %s:%d: %s\"}\n", host, port,
               mosquitto_strerror(rc));
        return 2;
    }

    uint64_t last_scan = 0;
    while (!st.fatal && st.phase != PH_DONE) {
        rc = mosquitto_loop(mosq, 20, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            char buf[160];
            snprintf(buf, sizeof buf, "network loop: %s", mosquitto_strerror(rc));
            fail(&st, buf);
            break;
        }
        uint64_t t = tick(&st);
        if (st.phase == PH_CONNECTING && t > st.connect_deadline_ns) {
            fail(&st, "not subscribed to the reply topic in time");
            break;
        }
        if (st.phase == PH_DRAIN) {
            bool busy = false;
            for (int i = 0; i < st.inflight && !busy; i++) busy = st.lanes[i].active;
            if (!busy || t > st.drain_ns) st.phase = PH_DONE;
        }
        /* Replace requests that got no reply (lost, refused, or a very slow server). */
        if ((st.phase == PH_WARMUP || st.phase == PH_MEASURE) && t - last_scan > 100000000ull) {
            last_scan = t;
            for (int i = 0; i < st.inflight; i++) {
                struct lane *ln = &st.lanes[i];
                if (ln->active && t - ln->sent_ns > (uint64_t)(REQUEST_TIMEOUT_S * 1e9)) {
                    st.errors++;
                    st.timeouts++;
                    ln->seq += (uint64_t)st.inflight;
                    send_request(mosq, &st, i);
                }
            }
        }
    }
    st.phase = PH_DONE;
    mosquitto_disconnect_v5(mosq, 0, NULL);
    mosquitto_loop(mosq, 10, 1);
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();

    if (st.fatal && st.start_ns == 0) {
        printf("{\"error\": \"%s\"}\n", st.fatal_msg);
        return 2;
    }
    int outstanding = 0;
    for (int i = 0; i < st.inflight; i++) outstanding += st.lanes[i].active;
    qsort(st.lat, st.nlat, sizeof *st.lat, cmp_u64);
    double sum = 0;
    for (size_t k = 0; k < st.nlat; k++) sum += (double)st.lat[k];
    if (st.cpu_t1 == 0.0) st.cpu_t1 = cpu_seconds();
    double cpu = st.cpu_t0 > 0 ? st.cpu_t1 - st.cpu_t0 : 0.0;
    printf("{\"msgs_per_s\": %.1f, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"count\": %zu, "
           "\"errors\": %llu, \"timeouts\": %llu, \"stale\": %llu, \"publish_errors\": %llu, "
           "\"mean_ms\": %.4f, \"max_ms\": %.4f, \"warmup_replies\": %llu, "
           "\"unanswered_at_end\": %d, \"loadgen_cpu_frac\": %.3f, \"qos\": %d, "
           "\"inflight\": %d, \"payload_size\": %d, \"duration_s\": %.3f%s%s%s}\n",
           (double)st.nlat / duration, pct_ms(st.lat, st.nlat, 0.50),
           pct_ms(st.lat, st.nlat, 0.99), st.nlat, (unsigned long long)st.errors,
           (unsigned long long)st.timeouts, (unsigned long long)st.stale,
           (unsigned long long)st.publish_errors, st.nlat ? sum / (double)st.nlat / 1e6 : 0.0,
           st.nlat ? (double)st.lat[st.nlat - 1] / 1e6 : 0.0,
           (unsigned long long)st.warmup_replies, outstanding, cpu / duration, st.qos,
           st.inflight, st.payload_size, duration, st.fatal ? ", \"error\": \"" : "",
           st.fatal ? st.fatal_msg : "", st.fatal ? "\"" : "");
    free(st.lat);
    free(st.lanes);
    free(st.payload);
    return 0;
}
