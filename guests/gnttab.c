/* Grant tables v1, guest side: map the table, grant and revoke access. */
#include "evtchn.h"

grant_entry_v1_t *gnttab;
static char gnttab_frame[4096] __attribute__((aligned(4096)));

long gnttab_map_table(void)
{
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .idx = 0,
        .gpfn = (uint64_t)gnttab_frame >> 12,
    };
    long rc = memory_op(XENMEM_add_to_physmap, &xatp);
    if (!rc) gnttab = (grant_entry_v1_t *)gnttab_frame;
    return rc;
}

/* domid and frame first, then the flags that make the entry valid (Xen reads them so). */
void gnttab_grant_access(grant_ref_t ref, domid_t domid, uint64_t gfn, int readonly)
{
    gnttab[ref].frame = (uint32_t)gfn;
    gnttab[ref].domid = domid;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&gnttab[ref].flags, GTF_permit_access | (readonly ? GTF_readonly : 0),
                     __ATOMIC_SEQ_CST);
}

/* Revoke: only if the grantee has it neither mapped nor in a copy (cmpxchg, as Linux). */
int gnttab_end_access(grant_ref_t ref)
{
    uint16_t flags = __atomic_load_n(&gnttab[ref].flags, __ATOMIC_SEQ_CST);
    do {
        if (flags & (GTF_reading | GTF_writing)) return -1;
    } while (!__atomic_compare_exchange_n(&gnttab[ref].flags, &flags, 0, 0,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return 0;
}

/* --- version 2 and self-mapping (gnttab.h) ------------------------------------------ */
#include "gnttab.h"

grant_entry_v2_t *gnttab_v2;
grant_status_t *gnttab_status;
static char status_frame[4096] __attribute__((aligned(4096)));

long gnttab_set_version(uint32_t version, uint32_t *now)
{
    struct gnttab_set_version sv = { .version = version };
    long rc = grant_table_op(GNTTABOP_set_version, &sv, 1);
    if (now) *now = sv.version;
    if (!rc) gnttab_v2 = (grant_entry_v2_t *)gnttab;
    return rc;
}

long gnttab_get_version(domid_t dom, uint32_t *version)
{
    struct gnttab_get_version gv = { .dom = dom };
    long rc = grant_table_op(GNTTABOP_get_version, &gv, 1);
    *version = gv.version;
    return rc;
}

long gnttab_map_frame(unsigned long idx, uint64_t gfn)
{
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .idx = idx, .gpfn = gfn,
    };
    return memory_op(XENMEM_add_to_physmap, &xatp);
}

long gnttab_map_status(void)
{
    long rc = gnttab_map_frame(XENMAPIDX_grant_table_status, (uint64_t)status_frame >> 12);
    if (!rc) gnttab_status = (grant_status_t *)status_frame;
    return rc;
}

/* As Linux's gnttab_update_entry_v2: the entry's body, then (after a barrier) its flags. */
static void set_v2_flags(grant_ref_t ref, domid_t domid, uint16_t flags)
{
    gnttab_v2[ref].hdr.domid = domid;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&gnttab_v2[ref].hdr.flags, flags, __ATOMIC_SEQ_CST);
}

void gnttab_grant_access_v2(grant_ref_t ref, domid_t domid, uint64_t gfn, int readonly)
{
    gnttab_v2[ref].full_page.frame = gfn;
    set_v2_flags(ref, domid, GTF_permit_access | (readonly ? GTF_readonly : 0));
}

void gnttab_grant_sub_page(grant_ref_t ref, domid_t domid, uint64_t gfn, uint16_t off,
                           uint16_t len)
{
    gnttab_v2[ref].sub_page.frame = gfn;
    gnttab_v2[ref].sub_page.page_off = off;
    gnttab_v2[ref].sub_page.length = len;
    set_v2_flags(ref, domid, GTF_permit_access | GTF_sub_page | GTF_readonly);
}

void gnttab_grant_transitive(grant_ref_t ref, domid_t domid, domid_t trans_domid,
                             grant_ref_t trans_gref)
{
    gnttab_v2[ref].transitive.trans_domid = trans_domid;
    gnttab_v2[ref].transitive.gref = trans_gref;
    set_v2_flags(ref, domid, GTF_transitive);
}

/* Linux's gnttab_end_foreign_access_ref_v2: revoke, then see whether Xen still uses it. */
int gnttab_end_access_v2(grant_ref_t ref)
{
    __atomic_store_n(&gnttab_v2[ref].hdr.flags, 0, __ATOMIC_SEQ_CST);
    return (__atomic_load_n(&gnttab_status[ref], __ATOMIC_SEQ_CST) &
            (GTF_reading | GTF_writing)) ? -1 : 0;
}

int gnttab_map_ref(domid_t dom, grant_ref_t ref, uint64_t host_addr, uint32_t flags,
                   grant_handle_t *handle, uint64_t *bus)
{
    struct gnttab_map_grant_ref op = {
        .host_addr = host_addr, .flags = flags, .ref = ref, .dom = dom,
        .handle = 0xdeadbeef,
    };
    long rc = grant_table_op(GNTTABOP_map_grant_ref, &op, 1);
    if (handle) *handle = op.handle;
    if (bus) *bus = op.dev_bus_addr;
    return rc ? (int)rc : op.status;
}

int gnttab_unmap_ref(grant_handle_t handle, uint64_t host_addr, uint64_t bus)
{
    struct gnttab_unmap_grant_ref op = {
        .host_addr = host_addr, .dev_bus_addr = bus, .handle = handle,
    };
    long rc = grant_table_op(GNTTABOP_unmap_grant_ref, &op, 1);
    return rc ? (int)rc : op.status;
}
