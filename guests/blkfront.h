/*
 * blkfront: the frontend of Xen's PV block protocol (xen/io/blkif.h) for the test guests,
 * over xenbus (xenbus.c), grant tables (gnttab.c) and a polled event channel per ring.
 * It connects as Linux's xen-blkfront does: reads the backend's features, allocates
 * one ring per queue (multi-page when asked), grants them, writes ring-ref(s),
 * event-channel(s), protocol and feature-persistent, goes Initialised, waits for the
 * backend's Connected and reads sectors/sector-size/info. I/O is synchronous: a buffer
 * of granted pages (the same grants every time: persistent) is cut into requests of up
 * to 11 segments, or into indirect requests when the backend offers them.
 */
#ifndef PYXEN_BLKFRONT_H
#define PYXEN_BLKFRONT_H

#include "pv.h"
#include <xen/grant_table.h>

#define xen_mb() mb()
#define xen_rmb() rmb()
#define xen_wmb() wmb()
#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>

#define BLKFRONT_MAX_QUEUES 4
#define BLKFRONT_MAX_RING_ORDER 2          /* up to 4 pages per ring */
#define BLKFRONT_IOBUF_PAGES 64             /* 256 KiB of granted buffer, shared by devices */
#define BLKFRONT_MAX_DEVICES 4

/* The x86_32-abi layout (a 32-bit frontend's): no padding before the 64-bit id. */
struct blkif32_request {
    uint8_t operation, nr_segments;
    uint16_t handle;
    uint64_t id, sector_number;
    struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
} __attribute__((packed, aligned(4)));
struct blkif32_request_discard {
    uint8_t operation, flag;
    uint16_t handle;
    uint64_t id, sector_number, nr_sectors;
} __attribute__((packed, aligned(4)));
struct blkif32_response {
    uint64_t id;
    uint8_t operation, _pad;
    int16_t status;
} __attribute__((packed, aligned(4)));
DEFINE_RING_TYPES(blkif32, struct blkif32_request, struct blkif32_response);

struct blkfront_queue {
    union { blkif_front_ring_t r64; blkif32_front_ring_t r32; } ring;
    void *sring;
    evtchn_port_t port;
    grant_ref_t refs[1 << BLKFRONT_MAX_RING_ORDER];
};

struct blkfront {
    unsigned int devid, slot;
    char fe[64], be[96];
    unsigned int backend_id;
    int abi32;                         /* protocol = x86_32-abi */
    unsigned int nr_queues, ring_order, max_indirect, persistent;
    struct blkfront_queue q[BLKFRONT_MAX_QUEUES];
    uint64_t sectors;
    unsigned int sector_size, info;
    int connected;
    unsigned long requests, errors;
};

extern int blkfront_events_lost;      /* other watch events were drained while waiting */
extern uint8_t blkfront_iobuf[BLKFRONT_IOBUF_PAGES * 4096];

int blkfront_init(void);               /* grant table + the shared buffer's grants */
/* Connect to device/vbd/<devid>: queues/ring_order/abi32 are what we ask for (clamped to
 * the backend's maxima). 0, or a negative Xen errno / -1 with a message printed. */
int blkfront_connect(struct blkfront *bf, unsigned int devid, unsigned int queues,
                     unsigned int ring_order, int abi32);
/* Synchronous I/O on the shared buffer: nsect 512-byte sectors at `sector` from/to
 * blkfront_iobuf + off (sector aligned). Returns the first non-OK BLKIF_RSP_* status. */
int blkfront_rw(struct blkfront *bf, int write, uint64_t sector, unsigned int nsect,
                size_t off, int indirect);
int blkfront_simple(struct blkfront *bf, uint8_t op, uint64_t sector, uint64_t nr);
/* One raw request as the caller built it (hostile tests), its status. */
int blkfront_raw(struct blkfront *bf, const struct blkif_request *req);
void blkfront_close(struct blkfront *bf);
void blkfront_forget(struct blkfront *bf);  /* after a resume in a new domain */
int blkfront_backend_state(struct blkfront *bf);
struct blkif_sring_hdr { RING_IDX req_prod, req_event, rsp_prod, rsp_event; };
grant_ref_t blkfront_iobuf_ref(unsigned int page);

#endif
