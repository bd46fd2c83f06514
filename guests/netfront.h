/* netfront: the guest half of Xen's PV network device (xen/io/netif.h) for the test
 * guests, as Linux's xen-netfront talks to any netback: xenbus handshake, a TX and an RX
 * ring in granted pages, one event channel (masked and polled, see xenbus.c). */
#ifndef PYXEN_NETFRONT_H
#define PYXEN_NETFRONT_H

#include "pv.h"
#include <xen/grant_table.h>
/* ring.h's barriers (it defines them itself only for old interface versions) */
#define xen_mb() mb()
#define xen_rmb() rmb()
#define xen_wmb() wmb()
#include <xen/io/netif.h>
#include <xen/io/xenbus.h>

#define NF_MAX      3    /* vifs a guest drives at once (their refs fit grant frame 0) */
#define NF_RX_BUFS  128  /* pages posted for receive */
#define NF_TX_BUFS  32   /* pages for frames in flight */

struct netfront {
    int active;                       /* connected: rings in use */
    unsigned int devid;
    char fpath[32];                   /* device/vif/N */
    char bpath[96];                   /* its backend directory */
    domid_t backend_id;
    uint8_t mac[6];
    uint32_t ip;                      /* network byte order, 0 if none */
    evtchn_port_t port;
    netif_tx_front_ring_t tx;
    netif_rx_front_ring_t rx;
    grant_ref_t ref_base;             /* tx ring, rx ring, rx bufs, tx bufs */
    uint16_t tx_free[NF_TX_BUFS];
    unsigned int tx_nfree;
    unsigned long tx_packets, tx_bytes, rx_packets, rx_bytes, tx_dropped;
    char *pages;                      /* 2 + NF_RX_BUFS + NF_TX_BUFS pages */
    uint32_t tx_dirty;                /* TX pages not holding the prepared frame */
    unsigned int prep_len;
    uint8_t prep[1536];               /* the prepared frame (netfront_tx_prepare) */
};

typedef void (*nf_rx_fn)(struct netfront *nf, uint8_t *frame, unsigned int len);

int nf_gnttab_init(void);                              /* once: map the grant table */
int netfront_attach(struct netfront *nf, unsigned int slot, unsigned int devid);
int netfront_send(struct netfront *nf, const void *frame, unsigned int len, int flush);
void netfront_flush(struct netfront *nf);
/* Streaming without copies: the same frame in every TX page once, then sends of it. */
void netfront_tx_prepare(struct netfront *nf, const void *frame, unsigned int len);
int netfront_send_prepared(struct netfront *nf, unsigned int len);
void netfront_reap(struct netfront *nf);
int netfront_poll(struct netfront *nf, nf_rx_fn rx);  /* frames handled */
int netfront_backend_closing(struct netfront *nf);     /* backend state >= Closing */
void netfront_close(struct netfront *nf);

#endif
