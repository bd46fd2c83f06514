/*
 * netfront for the test guests. The handshake is Linux's xen-netfront's:
 *   read backend, backend-id and mac from device/vif/N; wait for the backend's InitWait;
 *   grant the two ring pages, allocate an unbound event channel for the backend, write
 *   tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy=1, feature-rx-notify=1,
 *   feature-sg=0, feature-no-csum-offload=1 (this guest wants complete checksums), then
 *   state=Connected; wait for the backend's Connected; post every RX buffer.
 * RX buffers and TX pages stay granted (read-only for TX) for the device's lifetime: the
 * backend copies (feature-rx-copy), so a buffer is reused as soon as its response is in.
 * On the backend's Closing the frontend says Closed and stops using the rings.
 */
#include "netfront.h"

#define PAGE 4096
#define REF_FIRST 16                       /* refs 0-7 are the toolstack's */
#define REFS_PER_NF (2 + NF_RX_BUFS + NF_TX_BUFS)

extern grant_entry_v1_t *gnttab;
long gnttab_map_table(void);
void gnttab_grant_access(grant_ref_t ref, domid_t domid, uint64_t gfn, int readonly);

static char nf_pages[NF_MAX][REFS_PER_NF][PAGE] __attribute__((aligned(PAGE)));

static void copy_frame(void *d, const void *s, size_t n)
{
    asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) :: "memory");
}

int nf_gnttab_init(void) { return gnttab ? 0 : (int)gnttab_map_table(); }

static long read_str(const char *dir, const char *node, char *out, size_t size)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/%s", dir, node);
    return xb_read(path, out, size);
}

static long read_ul(const char *dir, const char *node, unsigned long *v)
{
    char buf[24];
    long rc = read_str(dir, node, buf, sizeof(buf));
    if (rc < 0) return rc;
    unsigned long n = 0;
    for (const char *p = buf; *p >= '0' && *p <= '9'; p++) n = n * 10 + (unsigned long)(*p - '0');
    *v = n;
    return 0;
}

static long write_ul(const char *dir, const char *node, unsigned long v)
{
    char path[160], val[24];
    snprintf(path, sizeof(path), "%s/%s", dir, node);
    snprintf(val, sizeof(val), "%lu", v);
    return xb_write(path, val);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[0]), lo = hexval(s[1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[2] != ':')) return -1;
        mac[i] = (uint8_t)(hi << 4 | lo);
        s += 3;
    }
    return 0;
}

static unsigned long backend_state(struct netfront *nf)
{
    unsigned long st = 0;
    if (read_ul(nf->bpath, "state", &st) < 0) return XenbusStateClosed;
    return st;
}

/* Until the backend reaches one of two states (or Closing and beyond): its state.
 * Every xenbus request clears the pending bits of all polled ports (xenbus.c), so a
 * watch event can arrive and be queued while we read: wait with a bound, never forever;
 * the events stay queued for the guest's main loop. */
static unsigned long wait_backend(struct netfront *nf, unsigned long a, unsigned long b)
{
    for (;;) {
        unsigned long st = backend_state(nf);
        if (st == a || st == b || st >= XenbusStateClosing) return st;
        pv_wait_until(pv_time_ns() + 20000000ull);
        pv_ack();
        xb_poll();
    }
}

int netfront_attach(struct netfront *nf, unsigned int slot, unsigned int devid)
{
    char buf[96];
    unsigned long bid;
    memset(nf, 0, sizeof(*nf));
    if (slot >= NF_MAX) return -XEN_ENOSPC;
    nf->devid = devid;
    nf->pages = &nf_pages[slot][0][0];
    nf->ref_base = REF_FIRST + slot * REFS_PER_NF;
    snprintf(nf->fpath, sizeof(nf->fpath), "device/vif/%u", devid);
    long rc = read_str(nf->fpath, "backend", nf->bpath, sizeof(nf->bpath));
    if (rc < 0) return (int)rc;
    if ((rc = read_ul(nf->fpath, "backend-id", &bid)) < 0) return (int)rc;
    nf->backend_id = (domid_t)bid;
    if ((rc = read_str(nf->fpath, "mac", buf, sizeof(buf))) < 0) return (int)rc;
    if (parse_mac(buf, nf->mac)) return -XEN_EINVAL;
    char path[128];
    snprintf(path, sizeof(path), "%s/state", nf->bpath);
    xb_watch(path, "netback");
    if (wait_backend(nf, XenbusStateInitWait, XenbusStateConnected) >= XenbusStateClosing)
        return -XEN_ENODEV;

    /* rings */
    char *txp = nf->pages, *rxp = nf->pages + PAGE;
    netif_tx_sring_t *txs = (netif_tx_sring_t *)txp;
    netif_rx_sring_t *rxs = (netif_rx_sring_t *)rxp;
    memset(txp, 0, 2 * PAGE);
    SHARED_RING_INIT(txs);
    SHARED_RING_INIT(rxs);
    FRONT_RING_INIT(&nf->tx, txs, PAGE);
    FRONT_RING_INIT(&nf->rx, rxs, PAGE);
    for (unsigned int i = 0; i < REFS_PER_NF; i++)
        gnttab_grant_access(nf->ref_base + i, nf->backend_id,
                            (uint64_t)(nf->pages + i * PAGE) >> 12, i >= 2 + NF_RX_BUFS);
    for (unsigned int i = 0; i < NF_TX_BUFS; i++) nf->tx_free[i] = (uint16_t)i;
    nf->tx_nfree = NF_TX_BUFS;

    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = nf->backend_id };
    if ((rc = pv_event_channel_op(EVTCHNOP_alloc_unbound, &au)) < 0) return (int)rc;
    nf->port = au.port;
    pv_evtchn_watch(nf->port);

    rc = write_ul(nf->fpath, "tx-ring-ref", nf->ref_base);
    if (!rc) rc = write_ul(nf->fpath, "rx-ring-ref", nf->ref_base + 1);
    if (!rc) rc = write_ul(nf->fpath, "event-channel", nf->port);
    if (!rc) rc = write_ul(nf->fpath, "request-rx-copy", 1);
    if (!rc) rc = write_ul(nf->fpath, "feature-rx-notify", 1);
    if (!rc) rc = write_ul(nf->fpath, "feature-sg", 0);
    if (!rc) rc = write_ul(nf->fpath, "feature-no-csum-offload", 1);
    if (!rc) rc = write_ul(nf->fpath, "state", XenbusStateConnected);
    if (rc) return (int)rc;
    if (wait_backend(nf, XenbusStateConnected, XenbusStateConnected) != XenbusStateConnected)
        return -XEN_ENODEV;

    for (unsigned int i = 0; i < NF_RX_BUFS; i++) {
        netif_rx_request_t *req = RING_GET_REQUEST(&nf->rx, nf->rx.req_prod_pvt);
        req->id = (uint16_t)i;
        req->gref = nf->ref_base + 2 + i;
        nf->rx.req_prod_pvt++;
    }
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&nf->rx, notify);
    if (notify) pv_notify(nf->port);
    nf->active = 1;
    return 0;
}

void netfront_reap(struct netfront *nf)
{
    int more;
    do {
        RING_IDX prod = nf->tx.sring->rsp_prod;
        rmb();
        for (RING_IDX i = nf->tx.rsp_cons; i != prod; i++) {
            netif_tx_response_t *rsp = RING_GET_RESPONSE(&nf->tx, i);
            if (rsp->status == NETIF_RSP_NULL) continue;
            if (rsp->id < NF_TX_BUFS && nf->tx_nfree < NF_TX_BUFS)
                nf->tx_free[nf->tx_nfree++] = rsp->id;
            if (rsp->status != NETIF_RSP_OKAY) nf->tx_dropped++;
        }
        nf->tx.rsp_cons = prod;
        RING_FINAL_CHECK_FOR_RESPONSES(&nf->tx, more);
    } while (more);
}

void netfront_flush(struct netfront *nf)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&nf->tx, notify);
    if (notify) pv_notify(nf->port);
}

int netfront_send(struct netfront *nf, const void *frame, unsigned int len, int flush)
{
    if (!nf->active || len > PAGE || len < 14) return -1;
    if (!nf->tx_nfree) netfront_reap(nf);
    if (!nf->tx_nfree) { nf->tx_dropped++; return -1; }
    uint16_t id = nf->tx_free[--nf->tx_nfree];
    char *page = nf->pages + (2 + NF_RX_BUFS + id) * PAGE;
    copy_frame(page, frame, len);
    nf->tx_dirty |= 1u << id;
    netif_tx_request_t *req = RING_GET_REQUEST(&nf->tx, nf->tx.req_prod_pvt);
    req->gref = nf->ref_base + 2 + NF_RX_BUFS + id;
    req->offset = 0;
    req->flags = 0;
    req->id = id;
    req->size = (uint16_t)len;
    nf->tx.req_prod_pvt++;
    nf->tx_packets++;
    nf->tx_bytes += len;
    if (flush) netfront_flush(nf);
    return 0;
}

void netfront_tx_prepare(struct netfront *nf, const void *frame, unsigned int len)
{
    if (len > sizeof(nf->prep)) len = sizeof(nf->prep);
    copy_frame(nf->prep, frame, len);
    nf->prep_len = len;
    nf->tx_dirty = ~0u;  /* pages get the frame on first use */
}

int netfront_send_prepared(struct netfront *nf, unsigned int len)
{
    if (!nf->active || !nf->tx_nfree) return -1;
    if (len > nf->prep_len) return -1;
    uint16_t id = nf->tx_free[--nf->tx_nfree];
    if (nf->tx_dirty & (1u << id)) {
        copy_frame(nf->pages + (2 + NF_RX_BUFS + id) * PAGE, nf->prep, nf->prep_len);
        nf->tx_dirty &= ~(1u << id);
    }
    netif_tx_request_t *req = RING_GET_REQUEST(&nf->tx, nf->tx.req_prod_pvt);
    req->gref = nf->ref_base + 2 + NF_RX_BUFS + id;
    req->offset = 0;
    req->flags = 0;
    req->id = id;
    req->size = (uint16_t)len;
    nf->tx.req_prod_pvt++;
    nf->tx_packets++;
    nf->tx_bytes += len;
    return 0;
}

int netfront_poll(struct netfront *nf, nf_rx_fn handler)
{
    if (!nf->active) return 0;
    int handled = 0, more;
    netfront_reap(nf);
    do {
        RING_IDX prod = nf->rx.sring->rsp_prod;
        rmb();
        for (RING_IDX i = nf->rx.rsp_cons; i != prod; i++) {
            netif_rx_response_t rsp = *RING_GET_RESPONSE(&nf->rx, i);
            uint16_t id = rsp.id < NF_RX_BUFS ? rsp.id : 0;
            if (rsp.status > 0 && rsp.offset + rsp.status <= PAGE &&
                !(rsp.flags & (NETRXF_more_data | NETRXF_extra_info))) {
                nf->rx_packets++;
                nf->rx_bytes += (unsigned long)rsp.status;
                handler(nf, (uint8_t *)nf->pages + (2 + id) * PAGE + rsp.offset,
                        (unsigned int)rsp.status);
                handled++;
            }
            netif_rx_request_t *req = RING_GET_REQUEST(&nf->rx, nf->rx.req_prod_pvt);
            req->id = id;
            req->gref = nf->ref_base + 2 + id;
            nf->rx.req_prod_pvt++;
        }
        nf->rx.rsp_cons = prod;
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&nf->rx, notify);
        if (notify) pv_notify(nf->port);
        RING_FINAL_CHECK_FOR_RESPONSES(&nf->rx, more);
    } while (more);
    netfront_flush(nf);
    return handled;
}

int netfront_backend_closing(struct netfront *nf)
{
    return backend_state(nf) >= XenbusStateClosing;
}

void netfront_close(struct netfront *nf)
{
    nf->active = 0;
    write_ul(nf->fpath, "state", XenbusStateClosed);
}
