/* PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18): the 32-bit physical entry point
 * that a PVH loader jumps to in flat 32-bit protected mode, paging off. */
#define PVH_NOTE(entry)                     \
    .pushsection .note.Xen, "a", @note;     \
    .balign 4;                              \
    .long 4;            /* namesz */        \
    .long 4;            /* descsz */        \
    .long 18;           /* type */          \
    .asciz "Xen";                           \
    .long entry;                            \
    .popsection
