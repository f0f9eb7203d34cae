/* Writes 4096 lines of 64 bytes (256 KiB) to COM1, then reports 0x21 on the
 * debug-exit port (0xf4): more than a pipe, kiln's relay and its socket hold, so
 * that a serial output nobody reads shows whether it holds the guest. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $4096, %ecx
    mov $0x3f8, %dx
1:  mov $line, %esi
2:  lodsb
    test %al, %al
    jz 3f
    outb %al, %dx
    jmp 2b
3:  loop 1b
    mov $0x21, %al
    out %al, $0xf4
4:  hlt
    jmp 4b
    .section .rodata
line:
    .asciz "kiln serial flood 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHI\n"
PVH_NOTE(pvh_start)
