/*
 * Exercises the int 0x80 half of pvm-syscall-repair.patch. On PVM hosts `int $0x80`
 * from user mode raises #UD, and with kiln_pvm_syscall_fixup=1 the #UD handler
 * completes it. On ordinary CPUs it is a normal 32-bit system call.
 * Expected either way: prints INT80-OK and exits with 42.
 */
	.globl	_start
_start:
	mov	$4, %eax			/* 32-bit write(1, msg, len) */
	mov	$1, %ebx
	lea	msg(%rip), %rcx
	mov	$len, %edx
	int	$0x80
	cmp	$len, %eax
	jne	1f
	mov	$1, %eax			/* 32-bit exit(42) */
	mov	$42, %ebx
	int	$0x80
1:	mov	$60, %eax			/* reached only if the write failed */
	mov	$1, %edi
	syscall

	.section .rodata
msg:	.ascii	"INT80-OK\n"
	.set	len, . - msg
