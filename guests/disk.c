/*
 * mode=disk: the disk test guest (blkfront.c). For every vbd in device/vbd, at boot and
 * whenever one is hot-plugged (a xenbus watch on device/vbd), it connects and:
 *   - writable disk: writes a pattern over the whole disk (64 KiB requests, indirect when
 *     offered), flushes, discards the last 4 KiB (when offered: it reads back as zeros),
 *     reads everything back, verifies it and prints the FNV-1a 64 of the disk's contents:
 *       pyxen disk: vbd 51712 verify ok fnv64 0123456789abcdef
 *   - read-only disk: tries to write sector 0 (the backend must refuse it), then reads the
 *     disk and prints its FNV-1a 64:  pyxen disk: vbd 51728 write refused (status -1)
 * Pattern and checksums are computed in ring 3 (native speed on kvm_pvm). A device whose
 * backend goes Closing is closed; one whose directory goes is forgotten:
 *       pyxen disk: vbd 51728 gone
 * Options: queues=N ring_order=N (what to ask the backend for), abi=32 (x86_32-abi ring
 * layout), hostile=1 (bad requests on the first disk first, see hostile()), bench=1
 * (bench/blk.py: timed sequential 64 KiB and random 4 KiB I/O instead of the pattern).
 * It answers control/shutdown (PV control) so `xl shutdown` works; the host checks the
 * images after shutdown.
 */
#include "blkfront.h"
#include "evtchn.h"

#define CHUNK_SECTORS 128          /* 64 KiB */
static struct blkfront devs[BLKFRONT_MAX_DEVICES];
static char user_stack[16384] __attribute__((aligned(16)));
static unsigned int opt_queues, opt_order, opt_abi32, opt_hostile, opt_bench;
static unsigned int my_domid;

/* --- ring 3 work -------------------------------------------------------------------- */

struct ujob { uint64_t op, seed, byte_off, len, hash; uint8_t *buf; };
enum { U_FILL, U_VERIFY, U_HASH, U_ZERO_OK };

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Word i of a disk (seed s) is mix(s ^ i): bench/blk.py and the tests compute it too. */
static uint64_t user_job(uint64_t arg)
{
    struct ujob *j = (struct ujob *)arg;
    uint64_t *w = (uint64_t *)j->buf, n = j->len / 8, first = j->byte_off / 8;
    switch (j->op) {
    case U_FILL:
        for (uint64_t i = 0; i < n; i++) w[i] = mix(j->seed ^ (first + i));
        return 0;
    case U_VERIFY:
        for (uint64_t i = 0; i < n; i++) if (w[i] != mix(j->seed ^ (first + i))) return i + 1;
        return 0;
    case U_ZERO_OK:
        for (uint64_t i = 0; i < n; i++) if (w[i]) return i + 1;
        return 0;
    default: {
        uint64_t h = j->hash;
        for (uint64_t i = 0; i < j->len; i++) { h ^= j->buf[i]; h *= 0x100000001b3ULL; }
        j->hash = h;
        return 0;
    }
    }
}

static uint64_t ujob(uint64_t op, uint64_t seed, uint64_t byte_off, uint64_t len,
                     uint64_t *hash)
{
    struct ujob j = { op, seed, byte_off, len, hash ? *hash : 0, blkfront_iobuf };
    uint64_t r = run_user(user_job, (uint64_t)&j, user_stack + sizeof(user_stack));
    if (hash) *hash = j.hash;
    return r;
}

/* --- the test --------------------------------------------------------------------- */

static uint64_t seed_of(struct blkfront *bf) { return ((uint64_t)my_domid << 32) ^ bf->devid; }

static void pattern_test(struct blkfront *bf)
{
    uint64_t total = bf->sectors, seed = seed_of(bf);
    int ind = bf->max_indirect >= 16;
    int st = 0;
    for (uint64_t s = 0; s < total && !st; s += CHUNK_SECTORS) {
        unsigned int n = total - s < CHUNK_SECTORS ? (unsigned int)(total - s) : CHUNK_SECTORS;
        ujob(U_FILL, seed, s * 512, n * 512ULL, NULL);
        st = blkfront_rw(bf, 1, s, n, 0, ind);
    }
    if (st) { printk("pyxen disk: vbd %u write failed (status %d)\n", bf->devid, st); return; }
    int fl = blkfront_simple(bf, BLKIF_OP_FLUSH_DISKCACHE, 0, 0);
    char v[8] = "0", path[128];
    snprintf(path, sizeof(path), "%s/feature-discard", bf->be);
    xb_read(path, v, sizeof(v));
    uint64_t disc_from = total;
    int dc = 1;
    if (v[0] == '1' && total >= 8) {
        disc_from = total - 8;
        dc = blkfront_simple(bf, BLKIF_OP_DISCARD, disc_from, 8);
        if (dc) disc_from = total;
    }
    uint64_t h = 0xcbf29ce484222325ULL, bad = 0;
    for (uint64_t s = 0; s < total && !st; s += CHUNK_SECTORS) {
        unsigned int n = total - s < CHUNK_SECTORS ? (unsigned int)(total - s) : CHUNK_SECTORS;
        st = blkfront_rw(bf, 0, s, n, 0, ind);
        uint64_t keep = s + n <= disc_from ? n : disc_from > s ? disc_from - s : 0;
        if (!bad && keep && ujob(U_VERIFY, seed, s * 512, keep * 512, NULL)) bad = s + 1;
        if (!bad && keep < n) {  /* the discarded tail reads as zeros */
            struct ujob j = { U_ZERO_OK, 0, 0, (n - keep) * 512, 0, blkfront_iobuf + keep * 512 };
            if (run_user(user_job, (uint64_t)&j, user_stack + sizeof(user_stack)))
                bad = s + keep + 1;
        }
        ujob(U_HASH, 0, 0, n * 512ULL, &h);
    }
    if (st) { printk("pyxen disk: vbd %u read failed (status %d)\n", bf->devid, st); return; }
    printk("pyxen disk: vbd %u flush %d discard %d\n", bf->devid, fl, dc);
    if (bad) printk("pyxen disk: vbd %u verify FAILED at sector %lu\n", bf->devid, (unsigned long)(bad - 1));
    else printk("pyxen disk: vbd %u verify ok fnv64 %016lx\n", bf->devid, (unsigned long)h);
}

static void readonly_test(struct blkfront *bf)
{
    int st = blkfront_rw(bf, 1, 0, 1, 0, 0);
    printk("pyxen disk: vbd %u write %s (status %d)\n", bf->devid,
           st ? "refused" : "ACCEPTED", st);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t s = 0; s < bf->sectors; s += CHUNK_SECTORS) {
        unsigned int n = bf->sectors - s < CHUNK_SECTORS ? (unsigned int)(bf->sectors - s) : CHUNK_SECTORS;
        int r = blkfront_rw(bf, 0, s, n, 0, 0);
        if (r) { printk("pyxen disk: vbd %u read failed (status %d)\n", bf->devid, r); return; }
        ujob(U_HASH, 0, 0, n * 512ULL, &h);
    }
    printk("pyxen disk: vbd %u read-only fnv64 %016lx\n", bf->devid, (unsigned long)h);
}

/* --- hostile frontend ----------------------------------------------------------------- */

static int raw_rw(struct blkfront *bf, uint8_t op, uint8_t nseg, uint64_t sector,
                  grant_ref_t gref, uint8_t first, uint8_t last)
{
    struct blkif_request r;
    memset(&r, 0, sizeof(r));
    r.operation = op; r.nr_segments = nseg; r.id = 0x77; r.sector_number = sector;
    r.handle = (blkif_vdev_t)bf->devid;
    for (unsigned int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
        r.seg[i].gref = gref; r.seg[i].first_sect = first; r.seg[i].last_sect = last;
    }
    return blkfront_raw(bf, &r);
}

static void hostile(struct blkfront *bf)
{
    grant_ref_t good = blkfront_iobuf_ref(0);
    printk("pyxen disk: hostile past-end %d\n", raw_rw(bf, BLKIF_OP_READ, 1, bf->sectors, good, 0, 0));
    printk("pyxen disk: hostile straddling-end %d\n", raw_rw(bf, BLKIF_OP_READ, 2, bf->sectors - 8, good, 0, 7));
    printk("pyxen disk: hostile huge-sector %d\n", raw_rw(bf, BLKIF_OP_READ, 1, ~0ULL - 3, good, 0, 7));
    printk("pyxen disk: hostile too-many-segments %d\n", raw_rw(bf, BLKIF_OP_READ, 12, 0, good, 0, 0));
    printk("pyxen disk: hostile zero-segments %d\n", raw_rw(bf, BLKIF_OP_READ, 0, 0, good, 0, 0));
    printk("pyxen disk: hostile bad-sect-range %d\n", raw_rw(bf, BLKIF_OP_READ, 1, 0, good, 6, 2));
    printk("pyxen disk: hostile last-sect-8 %d\n", raw_rw(bf, BLKIF_OP_READ, 1, 0, good, 0, 8));
    printk("pyxen disk: hostile bad-gref %d\n", raw_rw(bf, BLKIF_OP_READ, 1, 0, 100000, 0, 0));
    printk("pyxen disk: hostile ungranted-gref %d\n", raw_rw(bf, BLKIF_OP_READ, 1, 0, 400, 0, 0));
    printk("pyxen disk: hostile bad-op %d\n", raw_rw(bf, 42, 1, 0, good, 0, 0));
    {   /* an indirect request with more segments than the backend offers */
        struct blkif_request r;
        memset(&r, 0, sizeof(r));
        blkif_request_indirect_t *ir = (blkif_request_indirect_t *)&r;
        ir->operation = BLKIF_OP_INDIRECT; ir->indirect_op = BLKIF_OP_READ;
        ir->nr_segments = 4000; ir->id = 0x78; ir->indirect_grefs[0] = 100000;
        printk("pyxen disk: hostile indirect-too-many %d\n", blkfront_raw(bf, &r));
    }
    /* still serving? */
    printk("pyxen disk: hostile then-good %d\n", blkfront_rw(bf, 0, 0, 8, 0, 0));

    /* responses never consumed: post a ring's worth 4 times, never moving rsp_cons */
    struct blkfront_queue *q = &bf->q[0];
    blkif_front_ring_t *fr = &q->ring.r64;
    unsigned int size = RING_SIZE(fr), posted = 0;
    for (unsigned int round = 0; round < 4; round++) {
        for (unsigned int i = 0; i < size; i++) {
            blkif_request_t *r = RING_GET_REQUEST(fr, fr->req_prod_pvt);
            memset(r, 0, sizeof(*r));
            r->operation = BLKIF_OP_READ; r->nr_segments = 1; r->id = posted;
            r->seg[0].gref = good; r->seg[0].last_sect = 0;
            fr->req_prod_pvt++; posted++;
        }
        wmb();
        fr->sring->req_prod = fr->req_prod_pvt;
        pv_notify(q->port);
        /* The backend notifies only when rsp_prod passes rsp_event, which a frontend that
         * never consumes never moves: wait in short bounded polls, up to 60 s of system
         * time in all (a loaded host may take seconds to answer a ring's worth). */
        uint64_t give_up = pv_time_ns() + 60000000000ULL;
        while (fr->sring->rsp_prod != fr->req_prod_pvt && pv_time_ns() < give_up) {
            pv_ack();
            if (fr->sring->rsp_prod == fr->req_prod_pvt) break;
            pv_wait_until(pv_time_ns() + 10000000ULL);
        }
    }
    printk("pyxen disk: hostile never-consumed answered %u of %u\n",
           fr->sring->rsp_prod - fr->rsp_cons, posted);
    fr->rsp_cons = fr->sring->rsp_prod;  /* catch up: the ring must still work */
    printk("pyxen disk: hostile ring-still-usable %d\n", blkfront_rw(bf, 0, 0, 8, 0, 0));

    /* producer index far beyond the ring: the backend must stop serving this ring */
    fr->sring->req_prod = fr->req_prod_pvt + size + 5;
    pv_notify(q->port);
    for (unsigned int i = 0; i < 200; i++) sched_op(SCHEDOP_yield, NULL);
    printk("pyxen disk: hostile producer-beyond-ring answered %u\n",
           fr->sring->rsp_prod - fr->rsp_cons);
}

/* --- bench -------------------------------------------------------------------------- */

static uint64_t tsc(void) { uint32_t lo, hi; asm volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }

static void bench(struct blkfront *bf)
{
    /* sequential 64 KiB writes then reads over the whole disk, then 4 KiB random reads */
    uint64_t total = bf->sectors & ~(uint64_t)(CHUNK_SECTORS - 1);
    int ind = bf->max_indirect >= 16;
    unsigned int batch = BLKFRONT_IOBUF_PAGES * 8 / CHUNK_SECTORS; /* 4 x 64 KiB per kick */
    uint64_t t0 = tsc();
    for (uint64_t s = 0; s < total; s += CHUNK_SECTORS * batch)
        blkfront_rw(bf, 1, s, (unsigned int)(total - s < CHUNK_SECTORS * batch ? total - s : CHUNK_SECTORS * batch), 0, ind);
    uint64_t t1 = tsc();
    for (uint64_t s = 0; s < total; s += CHUNK_SECTORS * batch)
        blkfront_rw(bf, 0, s, (unsigned int)(total - s < CHUNK_SECTORS * batch ? total - s : CHUNK_SECTORS * batch), 0, ind);
    uint64_t t2 = tsc();
    unsigned long n = opt_ul("rand", 2000);
    uint64_t x = 12345, pages = bf->sectors / 8;
    for (unsigned long i = 0; i < n; i++) {
        x = mix(x);
        blkfront_rw(bf, 0, (x % pages) * 8, 8, 0, 0);
    }
    uint64_t t3 = tsc();
    printk("pyxen disk: bench bytes %lu write_tsc %lu read_tsc %lu rand %lu rand_tsc %lu\n",
           (unsigned long)(total * 512), (unsigned long)(t1 - t0), (unsigned long)(t2 - t1),
           n, (unsigned long)(t3 - t2));
}

/* --- the device loop ---------------------------------------------------------------- */

static struct blkfront *find(unsigned int devid)
{
    for (unsigned int i = 0; i < BLKFRONT_MAX_DEVICES; i++)
        if (devs[i].connected && devs[i].devid == devid) return &devs[i];
    return NULL;
}

static void scan(void)
{
    char names[512];
    long n = xb_directory("device/vbd", names, sizeof(names));
    int present[BLKFRONT_MAX_DEVICES] = { 0 };
    for (long i = 0; n > 0 && i < n; ) {
        unsigned int devid = 0;
        const char *p = names + i;
        for (; *p >= '0' && *p <= '9'; p++) devid = devid * 10 + (unsigned int)(*p - '0');
        i += (long)strlen(names + i) + 1;
        struct blkfront *bf = find(devid);
        if (!bf) {
            for (unsigned int k = 0; k < BLKFRONT_MAX_DEVICES; k++)
                if (!devs[k].connected) { bf = &devs[k]; break; }
            if (!bf) continue;
            int rc = blkfront_connect(bf, devid, opt_queues, opt_order, opt_abi32);
            if (rc) { printk("pyxen disk: vbd %u connect failed (%d)\n", devid, rc); continue; }
            printk("pyxen disk: vbd %u connected: %lu sectors of %u bytes, info %u, "
                   "%u queue(s) of %u page(s), %s, indirect %u, persistent %u\n",
                   devid, (unsigned long)bf->sectors, bf->sector_size, bf->info,
                   bf->nr_queues, 1u << bf->ring_order,
                   bf->abi32 ? "x86_32-abi" : "x86_64-abi", bf->max_indirect, bf->persistent);
            if (opt_hostile) { hostile(bf); opt_hostile = 0; }
            else if (opt_bench) bench(bf);
            else if (bf->info & VDISK_READONLY) readonly_test(bf);
            else pattern_test(bf);
        }
        present[bf - devs] = 1;
    }
    for (unsigned int k = 0; k < BLKFRONT_MAX_DEVICES; k++) {
        struct blkfront *bf = &devs[k];
        if (!bf->connected) continue;
        int st = blkfront_backend_state(bf);
        if (!present[k] || st == XenbusStateClosing || st == XenbusStateClosed ||
            st == XenbusStateUnknown) {
            unsigned int devid = bf->devid;
            blkfront_close(bf);
            printk("pyxen disk: vbd %u gone\n", devid);
        }
    }
}

void disk_main(unsigned int domid)
{
    char path[128], token[32];
    my_domid = domid;
    opt_queues = (unsigned int)opt_ul("queues", 1);
    opt_order = (unsigned int)opt_ul("ring_order", 0);
    opt_abi32 = opt_ul("abi", 64) == 32;
    opt_hostile = (unsigned int)opt_ul("hostile", 0);
    opt_bench = (unsigned int)opt_ul("bench", 0);
    long rc = xb_init();
    if (!rc) rc = blkfront_init();
    if (!rc) rc = pv_control_init();
    if (rc) {
        printk("pyxen disk: no xenbus/grants (%ld)\n", rc);
        shutdown(SHUTDOWN_crash);
    }
    xb_watch("device/vbd", "vbd");
    printk("pyxen disk: watching device/vbd\n");
    for (;;) {
        pv_ack();
        int rescan = 0;
        while (xb_next_event(path, sizeof(path), token, sizeof(token))) {
            int reason = pv_control_event(token);
            if (reason >= 0) {
                for (unsigned int k = 0; k < BLKFRONT_MAX_DEVICES; k++) blkfront_close(&devs[k]);
                printk("pyxen disk: shutdown requested: %s\n", pv_control_name(reason));
                shutdown((unsigned int)reason);
            }
            rescan = 1;
        }
        if (blkfront_events_lost) {  /* drained while waiting for a backend */
            blkfront_events_lost = 0;
            int reason = pv_control_event("control");
            if (reason >= 0) {
                printk("pyxen disk: shutdown requested: %s\n", pv_control_name(reason));
                shutdown((unsigned int)reason);
            }
            rescan = 1;
        }
        if (rescan) scan();
        else pv_wait();
    }
}
