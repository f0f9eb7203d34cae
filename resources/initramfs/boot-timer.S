/*
 * kiln-boot-timer: write the boot-timer magic byte to the boot-timer I/O port,
 * then exit 0 (1 when ioperm() is refused). No libc: one ioperm, one outb, one
 * exit. KILN_BOOT_TIMER_PORT and KILN_BOOT_TIMER_MAGIC come from
 * scripts/build-initramfs.sh (they match vmm/src/layout.rs BOOT_TIMER_PORT and
 * devices/src/legacy/boot_timer.rs BOOT_TIMER_MAGIC).
 */
#define SYS_ioperm 173
#define SYS_exit 60

	.text
	.globl _start
_start:
	mov	$SYS_ioperm, %eax
	mov	$KILN_BOOT_TIMER_PORT, %edi	/* from */
	mov	$1, %esi			/* num */
	mov	$1, %edx			/* turn_on */
	syscall
	mov	$1, %edi
	test	%rax, %rax
	jnz	1f
	mov	$KILN_BOOT_TIMER_PORT, %dx
	mov	$KILN_BOOT_TIMER_MAGIC, %al
	outb	%al, %dx
	xor	%edi, %edi
1:	mov	$SYS_exit, %eax
	syscall
	hlt
