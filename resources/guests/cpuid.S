/* kiln cpu verify guest: executes CPUID for every leaf in a list, in ring 0 and in
 * ring 3, then prints the results on COM1 and writes the debug-exit port.
 *
 * PVH entry (32-bit protected mode, paging off). It sets up long mode with an
 * identity map of the first GiB (user-accessible), a GDT with ring-0 and ring-3
 * 64-bit segments and a TSS, and an IDT. The ring-3 pass returns to ring 0 with ud2
 * (#UD), not a system call, because it needs no kernel entry set-up and works on hosts
 * where SYSCALL is broken.
 *
 * Leaf list: at image base + 16 (0x100010): "KCPULIST", count, capacity, then
 * `capacity` pairs (leaf, subleaf). The built-in list (leaves 0, 1, 7.0, 0x80000000,
 * 0x80000001) serves QEMU; kiln overwrites count and pairs in guest memory before boot.
 *
 * Output (COM1, 0x3f8), every number 8 hex digits:
 *     KCPU BEGIN <count>
 *     R0 <leaf> <subleaf> <eax> <ebx> <ecx> <edx>     (one per leaf, ring 0)
 *     R3 <leaf> <subleaf> <eax> <ebx> <ecx> <edx>     (one per leaf, ring 3)
 *     KCPU END
 * then 0x10 on port 0xf4 (QEMU isa-debug-exit status 33). An unexpected exception
 * prints "KCPU FAULT <vector>" and writes 0x13 (status 39).
 */
#include "pvh_note.h"

#define COM1            0x3f8
#define DEBUG_EXIT      0xf4
#define MAX_LEAVES      256
#define EXIT_OK         0x10
#define EXIT_FAULT      0x13
#define SEL_KCODE       0x08
#define SEL_KDATA       0x10
#define SEL_UCODE       0x18
#define SEL_UDATA       0x20
#define SEL_TSS         0x28

    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    jmp start32

    .balign 16
    .globl leaf_list
leaf_list:
    .ascii "KCPULIST"
leaf_count:
    .long 5
    .long MAX_LEAVES
leaf_entries:
    .long 0x0, 0
    .long 0x1, 0
    .long 0x7, 0
    .long 0x80000000, 0
    .long 0x80000001, 0
    .fill (MAX_LEAVES - 5) * 2, 4, 0

start32:
    cli
    lgdt gdt_ptr
    /* Page directory: 512 x 2 MiB pages, present, writable, user, large. */
    mov $pd, %edi
    mov $0x87, %eax
    mov $512, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b
    movl $(pdpt + 7), pml4
    movl $(pd + 7), pdpt
    /* TSS descriptor base (the assembler cannot split a relocated address). */
    mov $tss, %eax
    mov %ax, gdt_tss + 2
    shr $16, %eax
    mov %al, gdt_tss + 4
    mov %ah, gdt_tss + 7
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    ljmp $SEL_KCODE, $start64

    .code64
start64:
    mov $SEL_KDATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea kstack_top(%rip), %rsp
    /* IDT: vectors 0-31 -> isr_stubs[n], 64-bit interrupt gates. */
    lea idt(%rip), %rdi
    lea isr_stubs(%rip), %rsi
    mov $32, %ecx
2:  mov %rsi, %rax
    mov %ax, (%rdi)
    movw $SEL_KCODE, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    add $16, %rdi
    add $16, %rsi
    loop 2b
    lidt idt_ptr(%rip)
    lea kstack_top(%rip), %rax
    mov %rax, tss + 4(%rip)         /* RSP0 */
    mov $SEL_TSS, %ax
    ltr %ax

    lea results0(%rip), %rdi
    call run_leaves

    /* To ring 3: SS, RSP, RFLAGS, CS, RIP. */
    pushq $(SEL_UDATA | 3)
    lea ustack_top(%rip), %rax
    push %rax
    pushq $0x2
    pushq $(SEL_UCODE | 3)
    lea user_entry(%rip), %rax
    push %rax
    iretq

user_entry:
    lea results3(%rip), %rdi
    call run_leaves
    ud2                             /* back to ring 0 */

/* run_leaves: CPUID for each listed leaf; results (eax, ebx, ecx, edx) to %rdi. */
run_leaves:
    call clamp_count
    lea leaf_entries(%rip), %rsi
    xor %r9d, %r9d
3:  cmp %r8d, %r9d
    jae 4f
    mov (%rsi, %r9, 8), %eax
    mov 4(%rsi, %r9, 8), %ecx
    cpuid
    mov %eax, (%rdi)
    mov %ebx, 4(%rdi)
    mov %ecx, 8(%rdi)
    mov %edx, 12(%rdi)
    add $16, %rdi
    inc %r9d
    jmp 3b
4:  ret

/* clamp_count: %r8d = min(leaf_count, MAX_LEAVES). */
clamp_count:
    mov leaf_count(%rip), %r8d
    cmp $MAX_LEAVES, %r8d
    jbe 5f
    mov $MAX_LEAVES, %r8d
5:  ret

/* Exception stubs: push the vector, join isr_common. 16 bytes each. */
    .balign 16
isr_stubs:
    .set vector, 0
    .rept 32
    pushq $vector
    jmp isr_common
    .balign 16
    .set vector, vector + 1
    .endr

isr_common:
    mov (%rsp), %rbx
    cmp $6, %rbx                    /* #UD ... */
    jne fault
    mov 16(%rsp), %rax              /* ... from ring 3 (saved CS RPL) */
    test $3, %al
    jz fault
    call report
    mov $EXIT_OK, %al
    jmp exit

fault:
    lea msg_fault(%rip), %rsi
    call puts
    mov %ebx, %edi
    call puthex32
    mov $'\n', %al
    call putc
    mov $EXIT_FAULT, %al

exit:
    out %al, $DEBUG_EXIT
6:  hlt
    jmp 6b

report:
    lea msg_begin(%rip), %rsi
    call puts
    call clamp_count
    mov %r8d, %edi
    call puthex32
    mov $'\n', %al
    call putc
    lea results0(%rip), %r13
    mov $'0', %bl
    call print_results
    lea results3(%rip), %r13
    mov $'3', %bl
    call print_results
    lea msg_end(%rip), %rsi
    jmp puts

/* print_results: one line per leaf from %r13, ring digit in %bl. */
print_results:
    call clamp_count
    mov %r8d, %r15d
    lea leaf_entries(%rip), %r14
    xor %r12d, %r12d
7:  cmp %r15d, %r12d
    jae 9f
    mov $'R', %al
    call putc
    mov %bl, %al
    call putc
    mov (%r14, %r12, 8), %edi
    call space_hex
    mov 4(%r14, %r12, 8), %edi
    call space_hex
    xor %ecx, %ecx
8:  mov (%r13, %rcx, 4), %edi
    push %rcx
    call space_hex
    pop %rcx
    inc %ecx
    cmp $4, %ecx
    jb 8b
    mov $'\n', %al
    call putc
    add $16, %r13
    inc %r12d
    jmp 7b
9:  ret

space_hex:
    mov $' ', %al
    call putc
    /* fall through */
puthex32:                           /* %edi, 8 digits */
    mov $8, %ecx
10: rol $4, %edi
    mov %edi, %eax
    and $0xf, %eax
    lea hex_digits(%rip), %rdx
    movzbl (%rdx, %rax), %eax
    call putc
    loop 10b
    ret

puts:                               /* %rsi, NUL-terminated */
    lodsb
    test %al, %al
    jz 11f
    call putc
    jmp puts
11: ret

putc:                               /* %al; waits (bounded) for THR empty */
    push %rdx
    push %rcx
    push %rax
    mov $100000, %ecx
    mov $(COM1 + 5), %dx
12: in %dx, %al
    test $0x20, %al
    jnz 13f
    loop 12b
13: pop %rax
    mov $COM1, %dx
    out %al, %dx
    pop %rcx
    pop %rdx
    ret

    .section .rodata
hex_digits: .ascii "0123456789abcdef"
msg_begin:  .asciz "KCPU BEGIN "
msg_end:    .asciz "KCPU END\n"
msg_fault:  .asciz "KCPU FAULT "

    .section .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 ring-0 code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 ring-0 data */
    .quad 0x00affa000000ffff        /* 0x18 ring-3 code, 64-bit */
    .quad 0x00cff2000000ffff        /* 0x20 ring-3 data */
gdt_tss:
    .quad 0x0000890000000067        /* 0x28 64-bit TSS, base filled in at start */
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
idt_ptr:
    .word 32 * 16 - 1
    .quad idt

    .section .bss
    .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096
kstack: .skip 4096
kstack_top:
ustack: .skip 4096
ustack_top:
idt:    .skip 32 * 16
tss:    .skip 104
    .balign 16
results0: .skip 16 * MAX_LEAVES
results3: .skip 16 * MAX_LEAVES

PVH_NOTE(pvh_start)
