/* Xen ELF notes (xen/elfnote.h): what a PVH loader reads before it boots the guest. */
#include <xen/elfnote.h>

#define ELFNOTE(type, desctype, descdata)       \
    .pushsection .note.Xen, "a", @note;         \
    .p2align 2;                                 \
    .long 2f - 1f;                              \
    .long 4f - 3f;                              \
    .long type;                                 \
1:  .asciz "Xen";                               \
2:  .p2align 2;                                 \
3:  desctype descdata;                          \
4:  .p2align 2;                                 \
    .popsection

    ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz, "pyxen-test-guest")
    ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz, "1.0")
    ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz, "xen-3.0")
    ELFNOTE(XEN_ELFNOTE_LOADER, .asciz, "generic")
    ELFNOTE(XEN_ELFNOTE_FEATURES, .asciz, "!writable_page_tables")
#ifndef NO_PVH_NOTE
    ELFNOTE(XEN_ELFNOTE_PHYS32_ENTRY, .long, pvh_start32)
#endif

    .section .note.GNU-stack, "", @progbits
