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
