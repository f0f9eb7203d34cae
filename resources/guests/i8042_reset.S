/* CPU reset through the keyboard controller: command 0xFE on port 0x64.
 * kiln exits with code 2 (or reboots with --on-reset reboot). */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
PVH_NOTE(pvh_start)
