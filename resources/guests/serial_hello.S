/* Writes "hello from kiln guest\n" to COM1 (0x3f8), then reports 0x21 on the
 * debug-exit port (0xf4). Tests serial output routing. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $message, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  mov $0x21, %al
    out %al, $0xf4
3:  hlt
    jmp 3b
    .section .rodata
message:
    .asciz "hello from kiln guest\n"
PVH_NOTE(pvh_start)
