/* Smallest guest: report value 0x21 on the debug-exit port (0xf4) at once.
 * kiln's start-time benchmark and its exit-code tests use it. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $0x21, %al
    out %al, $0xf4
1:  hlt
    jmp 1b
PVH_NOTE(pvh_start)
