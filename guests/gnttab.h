/*
 * Grant tables, guest side, beyond v1 (evtchn.h): version 2 (entries + status frames),
 * and mapping grants into this guest's own physical address space (HVM map_grant_ref).
 */
#ifndef PYXEN_GNTTAB_H
#define PYXEN_GNTTAB_H

#include "evtchn.h"

extern grant_entry_v2_t *gnttab_v2;          /* = gnttab's frame, seen as v2 entries */
extern grant_status_t *gnttab_status;        /* status frame 0, once mapped */

long gnttab_set_version(uint32_t version, uint32_t *now);   /* rc; *now = version after */
long gnttab_get_version(domid_t dom, uint32_t *version);
long gnttab_map_frame(unsigned long idx, uint64_t gfn);     /* XENMAPSPACE_grant_table */
long gnttab_map_status(void);                 /* status frame 0 at a static page */
void gnttab_grant_access_v2(grant_ref_t ref, domid_t domid, uint64_t gfn, int readonly);
void gnttab_grant_sub_page(grant_ref_t ref, domid_t domid, uint64_t gfn, uint16_t off,
                           uint16_t len);
void gnttab_grant_transitive(grant_ref_t ref, domid_t domid, domid_t trans_domid,
                             grant_ref_t trans_gref);
int gnttab_end_access_v2(grant_ref_t ref);    /* 0, or -1 while the grantee uses it */

/* GNTTABOP_map_grant_ref / unmap_grant_ref of one ref: the GNTST_* status (or the
 * hypercall's error if it failed as a whole). */
int gnttab_map_ref(domid_t dom, grant_ref_t ref, uint64_t host_addr, uint32_t flags,
                   grant_handle_t *handle, uint64_t *bus);
int gnttab_unmap_ref(grant_handle_t handle, uint64_t host_addr, uint64_t bus);

#endif
