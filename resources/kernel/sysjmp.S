/*
 * Exercises the SYSCALL half of pvm-syscall-repair.patch on an ordinary CPU (TCG,
 * VT-x, AMD-V). It enters the kernel the way a PVM host delivers a SYSCALL: by
 * jumping from user mode to entry_SYSCALL_64 with the SYSCALL register convention
 * (RAX = number, RCX = return RIP, R11 = RFLAGS). The fetch faults with
 * RIP == CR2 == entry_SYSCALL_64, like on PVM.
 *   without kiln_pvm_syscall_fixup=1: SIGSEGV (exit status 139 in the shell);
 *   with it: prints SYSJMP-OK and exits with 42 (write and exit both go this way).
 * ENTRY_SYSCALL_64 is the symbol's address from System.map (no KASLR in this kernel).
 */
	.globl	_start
_start:
	movabs	$ENTRY_SYSCALL_64, %r8
	mov	$1, %eax			/* write(1, msg, msglen) */
	mov	$1, %edi
	lea	msg(%rip), %rsi
	mov	$msglen, %edx
	lea	1f(%rip), %rcx
	pushf
	pop	%r11
	jmp	*%r8
1:	cmp	$msglen, %rax
	jne	2f
	mov	$60, %eax			/* exit(42), the same way */
	mov	$42, %edi
	lea	2f(%rip), %rcx
	pushf
	pop	%r11
	jmp	*%r8
2:	mov	$60, %eax			/* reached only if the write failed */
	mov	$1, %edi
	syscall

	.section .rodata
msg:	.ascii	"SYSJMP-OK\n"
	.set	msglen, . - msg
