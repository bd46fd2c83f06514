/* blkfront for the test guests: see blkfront.h. */
#include "blkfront.h"
#include "evtchn.h"

#define PAGE 4096
#define REF_IOBUF 8                                   /* 8..71: the shared buffer */
#define REF_INDIRECT (REF_IOBUF + BLKFRONT_IOBUF_PAGES) /* 72..79: indirect pages */
#define NR_INDIRECT 8
#define REF_RINGS (REF_INDIRECT + NR_INDIRECT)        /* 80..: per device slot, queue, page */
#define RING_PAGES_PER_SLOT (BLKFRONT_MAX_QUEUES << BLKFRONT_MAX_RING_ORDER)

uint8_t blkfront_iobuf[BLKFRONT_IOBUF_PAGES * PAGE] __attribute__((aligned(PAGE)));
static struct blkif_request_segment indirect_pages[NR_INDIRECT][PAGE / 8]
    __attribute__((aligned(PAGE)));
static uint8_t ring_pages[BLKFRONT_MAX_DEVICES][RING_PAGES_PER_SLOT][PAGE]
    __attribute__((aligned(PAGE)));
static int slot_used[BLKFRONT_MAX_DEVICES];
int blkfront_events_lost;

grant_ref_t blkfront_iobuf_ref(unsigned int page) { return REF_IOBUF + page; }

int blkfront_init(void)
{
    if (gnttab) return 0;
    long rc = gnttab_map_table();
    if (rc) return (int)rc;
    for (unsigned int i = 0; i < BLKFRONT_IOBUF_PAGES; i++)
        gnttab_grant_access(REF_IOBUF + i, 0, ((uint64_t)blkfront_iobuf >> 12) + i, 0);
    for (unsigned int i = 0; i < NR_INDIRECT; i++)
        gnttab_grant_access(REF_INDIRECT + i, 0, (uint64_t)indirect_pages[i] >> 12, 1);
    return 0;
}

static unsigned long read_ul(const char *dir, const char *node, unsigned long dflt)
{
    char path[160], v[32];
    snprintf(path, sizeof(path), "%s/%s", dir, node);
    if (xb_read(path, v, sizeof(v)) < 0) return dflt;
    unsigned long n = 0;
    for (const char *p = v; *p >= '0' && *p <= '9'; p++) n = n * 10 + (unsigned long)(*p - '0');
    return n;
}

static long write_node(const char *dir, const char *node, const char *fmt, unsigned long v)
{
    char path[160], val[32];
    snprintf(path, sizeof(path), "%s/%s", dir, node);
    snprintf(val, sizeof(val), fmt, v);
    return xb_write(path, val);
}

int blkfront_backend_state(struct blkfront *bf)
{
    return (int)read_ul(bf->be, "state", XenbusStateUnknown);
}

/* Until the backend is in one of the two states (or Closed/gone): its state. */
static int wait_backend(struct blkfront *bf, int want1, int want2)
{
    char path[128], token[32], evp[128], evt[32];
    snprintf(path, sizeof(path), "%s/state", bf->be);
    snprintf(token, sizeof(token), "be%u", bf->devid);
    xb_watch(path, token);
    int st;
    for (;;) {
        pv_ack();
        while (xb_next_event(evp, sizeof(evp), evt, sizeof(evt)))
            if (strncmp(evt, token, sizeof(token))) blkfront_events_lost = 1;
        st = blkfront_backend_state(bf);
        if (st == want1 || st == want2 || st == XenbusStateClosed || st == XenbusStateUnknown)
            break;
        xb_wait();  /* the state read may have taken the next event's kick */
    }
    xb_unwatch(path, token);
    return st;
}

static void fe_state(struct blkfront *bf, int st) { write_node(bf->fe, "state", "%lu", (unsigned long)st); }

int blkfront_connect(struct blkfront *bf, unsigned int devid, unsigned int queues,
                     unsigned int ring_order, int abi32)
{
    memset(bf, 0, sizeof(*bf));
    bf->devid = devid;
    bf->slot = BLKFRONT_MAX_DEVICES;
    for (unsigned int s = 0; s < BLKFRONT_MAX_DEVICES; s++)
        if (!slot_used[s]) { bf->slot = s; break; }
    if (bf->slot == BLKFRONT_MAX_DEVICES) return -XEN_ENOSPC;
    snprintf(bf->fe, sizeof(bf->fe), "device/vbd/%u", devid);
    char path[128];
    snprintf(path, sizeof(path), "%s/backend", bf->fe);
    if (xb_read(path, bf->be, sizeof(bf->be)) < 0) return -XEN_ENOENT;
    bf->backend_id = (unsigned int)read_ul(bf->fe, "backend-id", 0);
    int st = wait_backend(bf, XenbusStateInitWait, XenbusStateConnected);
    if (st != XenbusStateInitWait) {
        printk("blkfront: vbd %u: backend in state %d, not InitWait\n", devid, st);
        return -1;
    }
    unsigned long maxq = read_ul(bf->be, "multi-queue-max-queues", 1);
    unsigned long maxo = read_ul(bf->be, "max-ring-page-order", 0);
    bf->nr_queues = queues < 1 ? 1 : queues > BLKFRONT_MAX_QUEUES ? BLKFRONT_MAX_QUEUES : queues;
    if (bf->nr_queues > maxq) bf->nr_queues = maxq ? (unsigned int)maxq : 1;
    bf->ring_order = ring_order > BLKFRONT_MAX_RING_ORDER ? BLKFRONT_MAX_RING_ORDER : ring_order;
    if (bf->ring_order > maxo) bf->ring_order = (unsigned int)maxo;
    bf->abi32 = abi32;
    slot_used[bf->slot] = 1;
    unsigned int npages = 1u << bf->ring_order;
    for (unsigned int qi = 0; qi < bf->nr_queues; qi++) {
        struct blkfront_queue *q = &bf->q[qi];
        uint8_t *mem = ring_pages[bf->slot][qi * npages];
        memset(mem, 0, npages * PAGE);
        q->sring = mem;
        if (abi32) {
            SHARED_RING_INIT((blkif32_sring_t *)mem);
            FRONT_RING_INIT(&q->ring.r32, (blkif32_sring_t *)mem, npages * PAGE);
        } else {
            SHARED_RING_INIT((blkif_sring_t *)mem);
            FRONT_RING_INIT(&q->ring.r64, (blkif_sring_t *)mem, npages * PAGE);
        }
        for (unsigned int i = 0; i < npages; i++) {
            q->refs[i] = REF_RINGS + bf->slot * RING_PAGES_PER_SLOT + qi * npages + i;
            gnttab_grant_access(q->refs[i], (domid_t)bf->backend_id,
                                ((uint64_t)mem >> 12) + i, 0);
        }
        struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = (domid_t)bf->backend_id };
        long rc = pv_event_channel_op(EVTCHNOP_alloc_unbound, &au);
        if (rc) { printk("blkfront: alloc_unbound: %ld\n", rc); return (int)rc; }
        q->port = au.port;
        pv_evtchn_watch(q->port);
        char dir[128];
        if (bf->nr_queues > 1) snprintf(dir, sizeof(dir), "%s/queue-%u", bf->fe, qi);
        else snprintf(dir, sizeof(dir), "%s", bf->fe);
        if (bf->ring_order) {
            write_node(dir, "ring-page-order", "%lu", bf->ring_order);
            for (unsigned int i = 0; i < npages; i++) {
                char node[16];
                snprintf(node, sizeof(node), "ring-ref%u", i);
                write_node(dir, node, "%lu", q->refs[i]);
            }
        } else {
            write_node(dir, "ring-ref", "%lu", q->refs[0]);
        }
        write_node(dir, "event-channel", "%lu", q->port);
    }
    if (bf->nr_queues > 1) write_node(bf->fe, "multi-queue-num-queues", "%lu", bf->nr_queues);
    snprintf(path, sizeof(path), "%s/protocol", bf->fe);
    xb_write(path, abi32 ? XEN_IO_PROTO_ABI_X86_32 : XEN_IO_PROTO_ABI_X86_64);
    write_node(bf->fe, "feature-persistent", "%lu", 1);
    fe_state(bf, XenbusStateInitialised);
    st = wait_backend(bf, XenbusStateConnected, XenbusStateClosing);
    if (st != XenbusStateConnected) {
        char err[128] = "";
        snprintf(path, sizeof(path), "%s/error", bf->be);
        xb_read(path, err, sizeof(err));
        printk("blkfront: vbd %u: backend state %d: %s\n", devid, st, err);
        fe_state(bf, XenbusStateClosed);
        return -1;
    }
    bf->sectors = read_ul(bf->be, "sectors", 0);
    bf->sector_size = (unsigned int)read_ul(bf->be, "sector-size", 512);
    bf->info = (unsigned int)read_ul(bf->be, "info", 0);
    bf->max_indirect = abi32 ? 0 : (unsigned int)read_ul(bf->be, "feature-max-indirect-segments", 0);
    bf->persistent = (unsigned int)read_ul(bf->be, "feature-persistent", 0);
    fe_state(bf, XenbusStateConnected);
    bf->connected = 1;
    /* the otherend watch: we hear the backend go Closing (xl block-detach) */
    char token[16];
    snprintf(path, sizeof(path), "%s/state", bf->be);
    snprintf(token, sizeof(token), "bs%u", devid);
    xb_watch(path, token);
    return 0;
}

/* --- rings ---------------------------------------------------------------------------- */

static int ring_full(struct blkfront_queue *q, int abi32)
{ return abi32 ? RING_FULL(&q->ring.r32) : RING_FULL(&q->ring.r64); }

static void put_rw(struct blkfront *bf, struct blkfront_queue *q, uint8_t op, uint64_t id,
                   uint64_t sector, const struct blkif_request_segment *segs, unsigned int n)
{
    if (bf->abi32) {
        struct blkif32_request *r = RING_GET_REQUEST(&q->ring.r32, q->ring.r32.req_prod_pvt);
        r->operation = op; r->nr_segments = (uint8_t)n; r->handle = (uint16_t)bf->devid;
        r->id = id; r->sector_number = sector;
        for (unsigned int i = 0; i < n; i++) r->seg[i] = segs[i];
        q->ring.r32.req_prod_pvt++;
    } else {
        struct blkif_request *r = RING_GET_REQUEST(&q->ring.r64, q->ring.r64.req_prod_pvt);
        r->operation = op; r->nr_segments = (uint8_t)n; r->handle = (blkif_vdev_t)bf->devid;
        r->id = id; r->sector_number = sector;
        for (unsigned int i = 0; i < n; i++) r->seg[i] = segs[i];
        q->ring.r64.req_prod_pvt++;
    }
}

static void push(struct blkfront_queue *q, int abi32)
{
    int notify;
    if (abi32) RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&q->ring.r32, notify);
    else RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&q->ring.r64, notify);
    if (notify) pv_notify(q->port);
}

/* Take the responses there are; the first bad status is kept in *status. */
static unsigned int reap(struct blkfront *bf, struct blkfront_queue *q, int *status)
{
    unsigned int got = 0;
    int more;
    do {
        if (bf->abi32) {
            RING_IDX rp = q->ring.r32.sring->rsp_prod;
            rmb();
            while (q->ring.r32.rsp_cons != rp) {
                struct blkif32_response *r = RING_GET_RESPONSE(&q->ring.r32, q->ring.r32.rsp_cons);
                if (r->status != BLKIF_RSP_OKAY && *status == BLKIF_RSP_OKAY) *status = r->status;
                q->ring.r32.rsp_cons++; got++;
            }
            RING_FINAL_CHECK_FOR_RESPONSES(&q->ring.r32, more);
        } else {
            RING_IDX rp = q->ring.r64.sring->rsp_prod;
            rmb();
            while (q->ring.r64.rsp_cons != rp) {
                blkif_response_t *r = RING_GET_RESPONSE(&q->ring.r64, q->ring.r64.rsp_cons);
                if (r->status != BLKIF_RSP_OKAY && *status == BLKIF_RSP_OKAY) *status = r->status;
                q->ring.r64.rsp_cons++; got++;
            }
            RING_FINAL_CHECK_FOR_RESPONSES(&q->ring.r64, more);
        }
    } while (more);
    return got;
}

static void wait_all(struct blkfront *bf, unsigned int *outstanding, int *status)
{
    while (1) {
        pv_ack();
        for (unsigned int qi = 0; qi < bf->nr_queues; qi++) {
            unsigned int got = reap(bf, &bf->q[qi], status);
            outstanding[qi] -= got;
        }
        unsigned int left = 0;
        for (unsigned int qi = 0; qi < bf->nr_queues; qi++) left += outstanding[qi];
        if (!left) return;
        pv_wait();
    }
}

int blkfront_rw(struct blkfront *bf, int write, uint64_t sector, unsigned int nsect,
                size_t off, int indirect)
{
    unsigned int outstanding[BLKFRONT_MAX_QUEUES] = { 0 };
    int status = BLKIF_RSP_OKAY;
    unsigned int maxsegs = BLKIF_MAX_SEGMENTS_PER_REQUEST;
    if (indirect && bf->max_indirect) {
        maxsegs = bf->max_indirect < PAGE / 8 ? bf->max_indirect : PAGE / 8;
    } else {
        indirect = 0;
    }
    uint8_t op = write ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    unsigned int qi = 0, nind = 0;
    uint64_t id = 0;
    while (nsect) {
        struct blkfront_queue *q = &bf->q[qi];
        while (ring_full(q, bf->abi32) || (indirect && nind == NR_INDIRECT)) {
            for (unsigned int i = 0; i < bf->nr_queues; i++) push(&bf->q[i], bf->abi32);
            wait_all(bf, outstanding, &status);
            nind = 0;
        }
        struct blkif_request_segment segs[BLKIF_MAX_SEGMENTS_PER_REQUEST];
        struct blkif_request_segment *sp = indirect ? indirect_pages[nind] : segs;
        unsigned int n = 0, sects = 0;
        while (nsect && n < maxsegs) {
            unsigned int page = (unsigned int)(off / PAGE), first = (unsigned int)(off % PAGE) / 512;
            unsigned int cnt = 8 - first < nsect ? 8 - first : nsect;
            sp[n].gref = blkfront_iobuf_ref(page);
            sp[n].first_sect = (uint8_t)first;
            sp[n].last_sect = (uint8_t)(first + cnt - 1);
            n++; sects += cnt; nsect -= cnt; off += (size_t)cnt * 512;
        }
        if (indirect) {
            blkif_request_indirect_t *r = (blkif_request_indirect_t *)
                RING_GET_REQUEST(&q->ring.r64, q->ring.r64.req_prod_pvt);
            memset(r, 0, sizeof(*r));
            r->operation = BLKIF_OP_INDIRECT; r->indirect_op = op;
            r->nr_segments = (uint16_t)n; r->id = id++; r->sector_number = sector;
            r->handle = (blkif_vdev_t)bf->devid;
            r->indirect_grefs[0] = REF_INDIRECT + nind;
            q->ring.r64.req_prod_pvt++;
            nind++;
        } else {
            put_rw(bf, q, op, id++, sector, segs, n);
        }
        outstanding[qi]++;
        bf->requests++;
        sector += sects;
        qi = (qi + 1) % bf->nr_queues;
    }
    for (unsigned int i = 0; i < bf->nr_queues; i++) push(&bf->q[i], bf->abi32);
    wait_all(bf, outstanding, &status);
    if (status != BLKIF_RSP_OKAY) bf->errors++;
    return status;
}

/* Flush (no segments) or discard (sector, nr sectors) on queue 0. */
int blkfront_simple(struct blkfront *bf, uint8_t op, uint64_t sector, uint64_t nr)
{
    unsigned int outstanding[BLKFRONT_MAX_QUEUES] = { 0 };
    int status = BLKIF_RSP_OKAY;
    struct blkfront_queue *q = &bf->q[0];
    if (op == BLKIF_OP_DISCARD && !bf->abi32) {
        blkif_request_discard_t *r = (blkif_request_discard_t *)
            RING_GET_REQUEST(&q->ring.r64, q->ring.r64.req_prod_pvt);
        memset(r, 0, sizeof(*r));
        r->operation = op; r->id = 7; r->sector_number = sector; r->nr_sectors = nr;
        r->handle = (blkif_vdev_t)bf->devid;
        q->ring.r64.req_prod_pvt++;
    } else if (op == BLKIF_OP_DISCARD) {
        struct blkif32_request_discard *r = (struct blkif32_request_discard *)
            RING_GET_REQUEST(&q->ring.r32, q->ring.r32.req_prod_pvt);
        memset(r, 0, sizeof(*r));
        r->operation = op; r->id = 7; r->sector_number = sector; r->nr_sectors = nr;
        r->handle = (uint16_t)bf->devid;
        q->ring.r32.req_prod_pvt++;
    } else {
        put_rw(bf, q, op, 7, sector, NULL, 0);
    }
    outstanding[0] = 1;
    push(q, bf->abi32);
    wait_all(bf, outstanding, &status);
    return status;
}

int blkfront_raw(struct blkfront *bf, const struct blkif_request *req)
{
    unsigned int outstanding[BLKFRONT_MAX_QUEUES] = { 0 };
    int status = BLKIF_RSP_OKAY;
    struct blkfront_queue *q = &bf->q[0];
    memcpy(RING_GET_REQUEST(&q->ring.r64, q->ring.r64.req_prod_pvt), req, sizeof(*req));
    q->ring.r64.req_prod_pvt++;
    outstanding[0] = 1;
    push(q, 0);
    wait_all(bf, outstanding, &status);
    return status;
}

/* Close as Linux's blkfront does when the backend goes Closing (or we are asked to):
 * Closing, wait for the backend to let go of our grants, revoke them, Closed. */
/* After a resume in a new domain: the backend, rings, grants and channels belonged to
 * the old domain and are gone; forget them without talking to anyone (Linux's blkfront
 * frees its rings on resume the same way), then blkfront_connect() again. */
void blkfront_forget(struct blkfront *bf)
{
    if (bf->slot < BLKFRONT_MAX_DEVICES) slot_used[bf->slot] = 0;
    bf->connected = 0;
    gnttab = NULL;  /* blkfront_init() maps the new domain's table and grants again */
}

void blkfront_close(struct blkfront *bf)
{
    if (!bf->connected) return;
    char path[128], token[16];
    snprintf(path, sizeof(path), "%s/state", bf->be);
    snprintf(token, sizeof(token), "bs%u", bf->devid);
    xb_unwatch(path, token);
    int gone = blkfront_backend_state(bf) == XenbusStateUnknown;
    if (!gone) {
        fe_state(bf, XenbusStateClosing);
        wait_backend(bf, XenbusStateClosing, XenbusStateClosed);
    }
    /* The backend unmaps our rings when it sees us Closing: wait for that (bounded),
     * then revoke the grants. */
    unsigned int npages = 1u << bf->ring_order;
    for (unsigned int qi = 0; qi < bf->nr_queues; qi++) {
        for (unsigned int i = 0; i < npages; i++) {
            unsigned int tries = 0;
            while (gnttab_end_access(bf->q[qi].refs[i]) && ++tries < 1000)
                sched_op(SCHEDOP_yield, NULL);
            if (tries == 1000)
                printk("blkfront: vbd %u: ring ref %u still mapped\n", bf->devid, bf->q[qi].refs[i]);
        }
        struct evtchn_close c = { .port = bf->q[qi].port };
        pv_event_channel_op(EVTCHNOP_close, &c);
    }
    if (!gone) fe_state(bf, XenbusStateClosed);
    slot_used[bf->slot] = 0;
    bf->connected = 0;
}
