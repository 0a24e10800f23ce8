/* A bare-metal integer loop of exactly 600,000,006 instructions, for ftvm and QEMU.
 * Built twice by bench/cpu.py: plain (ends through HTIF tohost, for ftvm) and with -DQEMU
 * (ends through the SiFive test finisher at 0x100000, for qemu-system-riscv64 -M virt). */
    .section .text.init
    .globl _start
_start:
    li t0, 100000000        /* 100M iterations of 6 instructions */
    li t1, 0
    li t2, 0x9e3779b9
1:  add t1, t1, t2
    xor t2, t2, t1
    slli t3, t1, 3
    add t2, t2, t3
    addi t0, t0, -1
    bnez t0, 1b
#ifdef QEMU
    li t0, 0x100000
    li t1, 0x5555
    sw t1, 0(t0)
#else
    li a0, 1
    la t1, tohost
    sd a0, 0(t1)
#endif
2:  j 2b

    .section .tohost, "aw"
    .align 3
    .globl tohost
tohost: .dword 0
    .globl fromhost
fromhost: .dword 0
