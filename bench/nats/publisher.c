/*
 * The yardstick for the nats sink benchmark: a plain C program that
 * publishes the lines of an NDJSON file to JetStream with the same C client
 * the sink uses, the same way: one message per line (without its newline),
 * asynchronous publish with a Nats-Msg-Id header, at most MAX_PENDING
 * publishes awaiting their ack (the client's own limit), then waits for
 * every ack. Lines are read into memory first, so only publishing is timed.
 *
 *     publisher URL STREAM SUBJECT FILE [MAX_PENDING]
 *     events=1000000 seconds=4.321 rate=231428 acked=1000000 errors=0 cpu_seconds=3.10
 *
 * STREAM is created as the sink would create it, if it is missing. Build: cc -O2 -o publisher publisher.c -lnats
 */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t acked, errors;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void) js;
    (void) closure;
    if (pa != NULL)
        __atomic_add_fetch(&acked, 1, __ATOMIC_RELAXED);
    else if (pae != NULL)
        __atomic_add_fetch(&errors, 1, __ATOMIC_RELAXED);
    natsMsg_Destroy(msg);
}

static void fail(const char *what, natsStatus s)
{
    fprintf(stderr, "publisher: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: publisher URL STREAM SUBJECT FILE [MAX_PENDING]\n");
        return 2;
    }
    const char *url = argv[1], *subject = argv[3], *path = argv[4];
    int64_t max_pending = argc > 5 ? atoll(argv[5]) : 4096;

    FILE *file = fopen(path, "r");
    if (file == NULL) {
        perror(path);
        return 1;
    }
    size_t capacity = 1 << 20, count = 0;
    char **lines = malloc(capacity * sizeof(char *));
    int *lengths = malloc(capacity * sizeof(int));
    char *line = NULL;
    size_t size = 0;
    ssize_t n;
    while ((n = getline(&line, &size, file)) > 0) {
        if (line[n - 1] == '\n')
            n--;
        if (count == capacity) {
            capacity *= 2;
            lines = realloc(lines, capacity * sizeof(char *));
            lengths = realloc(lengths, capacity * sizeof(int));
        }
        lines[count] = malloc(n);
        memcpy(lines[count], line, n);
        lengths[count] = (int) n;
        count++;
    }
    fclose(file);

    natsConnection *nc = NULL;
    natsOptions *opts = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    if (s != NATS_OK)
        fail("connect", s);
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = max_pending;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.StallWait = 60000;
    if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
        fail("jetstream", s);
    /* The stream as the sink creates it: subjects pipelined.>, file storage,
     * a 2 minute duplicate window. */
    jsStreamInfo *info = NULL;
    if (js_GetStreamInfo(&info, js, argv[2], NULL, NULL) != NATS_OK) {
        jsStreamConfig config;
        const char *subjects[] = { "pipelined.>" };
        jsStreamConfig_Init(&config);
        config.Name = argv[2];
        config.Subjects = subjects;
        config.SubjectsLen = 1;
        config.Storage = js_FileStorage;
        config.Duplicates = 120LL * 1000000000LL;
        if ((s = js_AddStream(&info, js, &config, NULL, NULL)) != NATS_OK)
            fail(argv[2], s);
    }
    jsStreamInfo_Destroy(info);

    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double start = now();
    char id[64];
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id;
    for (size_t i = 0; i < count; i++) {
        natsMsg *msg = NULL;
        snprintf(id, sizeof(id), "bench:%d:%zu", (int) getpid(), i);
        s = natsMsg_Create(&msg, subject, NULL, lines[i], lengths[i]);
        if (s == NATS_OK)
            s = js_PublishMsgAsync(js, &msg, &po);
        natsMsg_Destroy(msg);
        if (s != NATS_OK)
            fail("publish", s);
    }
    jsPubOptions complete;
    jsPubOptions_Init(&complete);
    complete.MaxWait = 120000;
    if ((s = js_PublishAsyncComplete(js, &complete)) != NATS_OK)
        fail("waiting for acks", s);
    double seconds = now() - start;
    getrusage(RUSAGE_SELF, &after);
    double cpu = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) + (after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6
               + (after.ru_stime.tv_sec - before.ru_stime.tv_sec) + (after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    printf("events=%zu seconds=%.3f rate=%.0f acked=%lld errors=%lld cpu_seconds=%.2f\n",
           count, seconds, count / seconds, (long long) acked, (long long) errors, cpu);

    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    return 0;
}
