/* Triple fault: an empty IDT, then an exception. #UD cannot be delivered (#GP),
 * neither can #GP (double fault), nor #DF: the CPU shuts down, which kiln treats
 * as a reset (exit code 2). */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    lidt idt_desc
    ud2
1:  jmp 1b
    .section .rodata
    .balign 8
idt_desc:
    .word 0
    .long 0
PVH_NOTE(pvh_start)
