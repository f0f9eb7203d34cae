/* Writes the boot-timer magic (123) to port 0x440, then reports 0x21 on the
 * debug-exit port (0xf4). */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $123, %al
    mov $0x440, %dx
    outb %al, %dx
    mov $0x21, %al
    out %al, $0xf4
1:  hlt
    jmp 1b
PVH_NOTE(pvh_start)
