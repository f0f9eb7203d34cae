/* Never ends, at no host cost: interrupts off, then HLT forever. With an
 * in-kernel LAPIC the halted vCPU sleeps in KVM. kiln's --timeout test uses it. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    cli
1:  hlt
    jmp 1b
PVH_NOTE(pvh_start)
