/* ACPI soft-off through kiln's hardware-reduced SLEEP_CONTROL_REG (port 0x600):
 * SLP_TYP = 5 (\_S5) in bits 4:2, SLP_EN in bit 5. kiln exits with code 0. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov $((5 << 2) | (1 << 5)), %al
    mov $0x600, %dx
    outb %al, %dx
1:  hlt
    jmp 1b
PVH_NOTE(pvh_start)
