/* Reads the first virtio-mmio window (0xd0000000): checks MagicValue ("virt"),
 * then reports DeviceID on the debug-exit port (0xf4), or 0x7f if the magic is
 * wrong. Tests kiln's MMIO bus and virtio-mmio device manager. */
#include "pvh_note.h"
    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    mov 0xd0000000, %eax
    cmp $0x74726976, %eax
    jne 1f
    mov 0xd0000008, %eax
    out %al, $0xf4
1:  mov $0x7f, %al
    out %al, $0xf4
2:  hlt
    jmp 2b
PVH_NOTE(pvh_start)
