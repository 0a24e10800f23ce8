/* traps: synchronous exceptions, privilege changes (mret/sret, delegation),
 * access faults, and timer/software interrupts with a vectored mtvec. */
#include "test.h"

#define CLINT_MSIP     0x2000000
#define CLINT_MTIMECMP 0x2004000
#define CLINT_MTIME    0x200bff8
#define IRQ_BIT        0x8000000000000000
#define MIP_SSIP       (1 << 1)
#define MIP_MSIP       (1 << 3)
#define MIP_MTIP       (1 << 7)
#define UNMAPPED       0x100000000000       /* no memory or device there */

/* A faulting AMO raises a store/AMO access fault. QEMU 7.2 deviates and
 * raises a load access fault, so its flavour expects that. */
#ifdef QEMU
#define AMO_ACCESS_CAUSE CAUSE_LOAD_ACCESS
#else
#define AMO_ACCESS_CAUSE CAUSE_STORE_ACCESS
#endif

/* a0 = mstatus.MPP */
#define READ_MPP                                                          \
        csrr a0, mstatus;                                                 \
        srli a0, a0, 11;                                                  \
        andi a0, a0, 3

/* Program mtimecmp = mtime + delta. */
#define TIMER_IN(delta)                                                   \
        li t1, CLINT_MTIME;                                               \
        ld t0, 0(t1);                                                     \
        addi t0, t0, delta;                                               \
        li t1, CLINT_MTIMECMP;                                            \
        sd t0, 0(t1)

TEST_BEGIN
        /* ---- exceptions taken in M-mode ---- */
        TEST_TRAP(1, CAUSE_MACHINE_ECALL, 1: ecall)
        CASE(2)                                     /* mepc = the ecall, mtval = 0, MPP = M */
        csrr t5, mepc
        la a1, 1b
        CHECKR(t5, a1)
        csrr t5, mtval
        CHECK(t5, 0)
        READ_MPP
        CHECK(a0, 3)
        TEST_TRAP(3, CAUSE_BREAKPOINT, 1: ebreak)
        CASE(4)
        csrr t5, mepc
        la a1, 1b
        CHECKR(t5, a1)
        TEST_TRAP(5, CAUSE_ILLEGAL_INSN, 1: .word 0xc0001073)   /* csrw cycle, zero: read-only CSR */
        CASE(6)                                     /* mtval = the instruction bits */
        csrr t5, mepc
        la a1, 1b
        CHECKR(t5, a1)
        csrr t5, mtval
        CHECK(t5, 0xc0001073)
        TEST_TRAP(7, CAUSE_ILLEGAL_INSN, .word 0x0000006b)   /* reserved major opcode */
        TEST_CASE(8, t5, 0x6b, csrr t5, mtval)
        TEST_TRAP(9, CAUSE_ILLEGAL_INSN, .word 0xffffffff)
        CASE(10)                                    /* the trap clears MIE and saves it in MPIE */
        csrsi mstatus, MSTATUS_MIE
        la tp, 1f
        ecall
        j fail
1:      csrr a0, mstatus
        andi a1, a0, MSTATUS_MIE
        CHECK(a1, 0)
        andi a1, a0, MSTATUS_MPIE
        CHECK(a1, MSTATUS_MPIE)
        CASE(11)                                    /* mret back to M: MIE = MPIE, MPIE = 1, MPP = U */
        la t0, 1f
        csrw mepc, t0
        li t0, MSTATUS_MPP
        csrs mstatus, t0
        mret
        j fail
1:      csrr a0, mstatus
        andi a1, a0, MSTATUS_MIE
        CHECK(a1, MSTATUS_MIE)
        andi a1, a0, MSTATUS_MPIE
        CHECK(a1, MSTATUS_MPIE)
        READ_MPP
        CHECK(a0, 0)
        csrci mstatus, MSTATUS_MIE
        CASE(12)                                    /* a handler that returns with mret (mepc += 4) */
        la t0, skip_handler
        csrw mtvec, t0
        li a0, 1
        ecall
        addi a0, a0, 1
        ebreak
        addi a0, a0, 1
        la t0, trap_default
        csrw mtvec, t0
        CHECK(a0, 3)
        CASE(13)                                    /* medeleg does not apply to traps taken in M */
        li t0, (1 << CAUSE_ILLEGAL_INSN) | (1 << CAUSE_BREAKPOINT)
        csrw medeleg, t0
        la t0, s_fail_handler
        csrw stvec, t0
        la tp, 1f
        ebreak
        j fail
1:      csrr t5, mcause
        CHECK(t5, CAUSE_BREAKPOINT)
        csrw medeleg, zero

        /* ---- U-mode ---- */
        TEST_TRAP(20, CAUSE_USER_ECALL, li a0, 0; GOTO_PRIV(0, 1f); 1: li a0, 0x55; 2: ecall)
        CASE(21)                                    /* mepc, MPP = U, registers kept */
        csrr t5, mepc
        la a1, 2b
        CHECKR(t5, a1)
        READ_MPP
        CHECK(a0, 0)
        TEST_TRAP(22, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: csrr a0, mstatus)
        TEST_CASE(23, t5, 0x30002573, csrr t5, mtval)                    /* csrr a0, mstatus */
        TEST_TRAP(24, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: csrr a0, sscratch)
        TEST_TRAP(25, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: mret)
        TEST_TRAP(26, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: sret)
        TEST_TRAP(27, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: sfence.vma)
        CASE(28)                                    /* counters: mcounteren = scounteren = 0 */
        csrw mcounteren, zero
        csrw scounteren, zero
        TEST_TRAP(29, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: rdcycle a0)
        TEST_TRAP(30, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: rdinstret a0)
        CASE(31)                                    /* mcounteren alone opens them to S only */
        li t0, 7
        csrw mcounteren, t0
        TEST_TRAP(32, CAUSE_SUPERVISOR_ECALL, GOTO_PRIV(1, 1f); 1: rdcycle a0; rdtime a0; rdinstret a0; ecall)
        TEST_TRAP(33, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: rdtime a0)
        CASE(34)
        li t0, 7
        csrw scounteren, t0
        TEST_TRAP(35, CAUSE_USER_ECALL, GOTO_PRIV(0, 1f); 1: rdcycle a0; rdtime a0; rdinstret a0; ecall)
        CASE(36)                                    /* mret to U clears MPRV */
        li t0, MSTATUS_MPRV
        csrs mstatus, t0
        TEST_TRAP(37, CAUSE_USER_ECALL, GOTO_PRIV(0, 1f); 1: ecall)
#ifndef QEMU
        /* QEMU 7.2 deviates: it predates the priv-1.12 rule "xRET to a mode other than M clears MPRV". */
        CASE(38)
        csrr a0, mstatus
        li t0, MSTATUS_MPRV
        and a0, a0, t0
        CHECK(a0, 0)
#endif
        li t0, MSTATUS_MPRV
        csrc mstatus, t0

        /* ---- S-mode, delegation to S, sret ---- */
        TEST_TRAP(40, CAUSE_SUPERVISOR_ECALL, GOTO_PRIV(1, 1f); 1: ecall)
        CASE(41)
        READ_MPP
        CHECK(a0, 1)
        TEST_TRAP(42, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: csrr a0, mscratch)
        TEST_TRAP(43, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: mret)
        CASE(44)                                    /* ecall from U delegated to S */
        li t0, 1 << CAUSE_USER_ECALL
        csrw medeleg, t0
        la t0, s_ecall_handler
        csrw stvec, t0
        li s1, 0
        la tp, 3f
        GOTO_PRIV(1, 1f)
1:      /* S-mode: drop to U with sret */
        li t0, MSTATUS_SPP
        csrc sstatus, t0
        li t0, MSTATUS_SPIE
        csrs sstatus, t0
        la t0, 2f
        csrw sepc, t0
        sret
        j fail
2:      /* U-mode */
        li a0, 0x55
u_ecall:
        ecall                                       /* -> s_ecall_handler, which ecalls to M */
        j fail
3:      /* M-mode again */
        csrr t5, mcause
        CHECK(t5, CAUSE_SUPERVISOR_ECALL)
        CASE(45)
        CHECK(s1, 1)                                /* the S handler ran and checked itself */
        CHECK(a0, 0x55)
        csrr t5, mepc
        la a1, s_ecall
        CHECKR(t5, a1)
        CASE(46)                                    /* S traps delegated while in S: SPP = 1, sret returns */
        li t0, 1 << CAUSE_BREAKPOINT
        csrw medeleg, t0
        la t0, s_skip_handler
        csrw stvec, t0
        li s1, 0
        TEST_TRAP(47, CAUSE_SUPERVISOR_ECALL, GOTO_PRIV(1, 1f); 1: li a0, 1; ebreak; addi a0, a0, 1; ecall)
        CASE(48)
        CHECK(a0, 2)
        CHECK(s1, 1)
        csrr t5, scause
        CHECK(t5, CAUSE_BREAKPOINT)
        CASE(49)                                    /* TSR makes sret illegal in S */
        csrw medeleg, zero
        li t0, 1 << 22
        csrs mstatus, t0
        TEST_TRAP(50, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: sret)
        CASE(51)                                    /* TW makes wfi illegal in S */
        li t0, 1 << 22
        csrc mstatus, t0
        li t0, 1 << 21
        csrs mstatus, t0
        TEST_TRAP(52, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: wfi)
        CASE(53)                                    /* TVM makes satp and sfence.vma illegal in S */
        li t0, 1 << 21
        csrc mstatus, t0
        li t0, 1 << 20
        csrs mstatus, t0
        TEST_TRAP(54, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: csrr a0, satp)
        TEST_TRAP(55, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: sfence.vma)
        CASE(56)
        li t0, 1 << 20
        csrc mstatus, t0

        /* ---- access faults ---- */
        TEST_TRAP(60, CAUSE_LOAD_ACCESS, li a1, UNMAPPED; 1: ld a0, 0(a1))
        CASE(61)
        csrr t5, mepc
        la a2, 1b
        CHECKR(t5, a2)
        csrr t5, mtval
        CHECKR(t5, a1)
        TEST_TRAP(62, CAUSE_STORE_ACCESS, li a1, UNMAPPED + 8; sw a0, 0(a1))
        TEST_CASE(63, t5, UNMAPPED + 8, csrr t5, mtval)
        TEST_TRAP(64, CAUSE_LOAD_ACCESS, li a1, UNMAPPED; lbu a0, 5(a1))
        TEST_CASE(65, t5, UNMAPPED + 5, csrr t5, mtval)
        TEST_TRAP(66, AMO_ACCESS_CAUSE, li a1, UNMAPPED; amoadd.d a0, a0, (a1))
        TEST_TRAP(67, CAUSE_FETCH_ACCESS, li a1, UNMAPPED; jalr a1)
        CASE(68)
        csrr t5, mepc
        CHECK(t5, UNMAPPED)
        csrr t5, mtval                              /* the address, or 0 */
        beqz t5, 1f
        CHECK(t5, UNMAPPED)
1:

        /* ---- interrupts, vectored mtvec ---- */
        CASE(70)
        la t0, vec_table
        ori t0, t0, 1
        csrw mtvec, t0
        csrr a0, mtvec
        CHECKR(a0, t0)
        TEST_TRAP(71, CAUSE_MACHINE_ECALL, ecall)  /* exceptions use the base address */
        CASE(72)                                    /* timer interrupt while spinning */
        li s4, 0
        TIMER_IN(300)
        li t0, MIP_MTIP
        csrs mie, t0
        li a1, 20000000
        csrsi mstatus, MSTATUS_MIE
1:      bnez s4, 2f
        addi a1, a1, -1
        bnez a1, 1b
        j fail
2:      csrci mstatus, MSTATUS_MIE
        CASE(73)
        CHECK(s4, 1)
        CHECK(s2, IRQ_BIT | 7)
        la a0, 1b
        bltu s3, a0, fail                           /* mepc is in the spin loop */
        la a0, 2b
        bgeu s3, a0, fail
        andi a0, s5, MSTATUS_MPIE                   /* in the handler: MPIE = 1, MIE = 0, MPP = M */
        CHECK(a0, MSTATUS_MPIE)
        andi a0, s5, MSTATUS_MIE
        CHECK(a0, 0)
        srli a0, s5, 11
        andi a0, a0, 3
        CHECK(a0, 3)
        CASE(74)                                    /* mtimecmp in the future: no pending timer */
        csrr a0, mip
        andi a0, a0, MIP_MTIP
        CHECK(a0, 0)
        CASE(75)                                    /* wfi wakes on a pending timer even with MIE = 0 */
        li s4, 0
        TIMER_IN(300)
        li a1, 100000
1:      wfi
        csrr a0, mip
        andi a0, a0, MIP_MTIP
        bnez a0, 2f
        addi a1, a1, -1
        bnez a1, 1b
        j fail
2:      CHECK(s4, 0)                                /* MIE = 0: not taken */
        csrsi mstatus, MSTATUS_MIE                  /* ... until enabled */
        nop
        nop
        csrci mstatus, MSTATUS_MIE
        CHECK(s4, 1)
        CHECK(s2, IRQ_BIT | 7)
        CASE(76)                                    /* M interrupts are always enabled below M */
        li s4, 0
        li t1, CLINT_MTIMECMP
        sd zero, 0(t1)                              /* pending now */
        li t0, MSTATUS_MPIE
        csrc mstatus, t0
        TEST_TRAP(77, CAUSE_USER_ECALL, GOTO_PRIV(0, 1f); 1: nop; 2: ecall)
        CASE(78)
        CHECK(s4, 1)
        CHECK(s2, IRQ_BIT | 7)
        la a0, 1b                                   /* taken before the ecall */
        bltu s3, a0, fail
        la a0, 2b
        bgtu s3, a0, fail
        srli a0, s5, 11                             /* MPP = U */
        andi a0, a0, 3
        CHECK(a0, 0)
        li t0, MIP_MTIP
        csrc mie, t0
        CASE(79)                                    /* machine software interrupt through the CLINT */
        li s4, 0
        li t0, MIP_MSIP
        csrs mie, t0
        csrsi mstatus, MSTATUS_MIE
        li t1, CLINT_MSIP
        li t0, 1
        sw t0, 0(t1)
        li a1, 1000
1:      bnez s4, 2f
        addi a1, a1, -1
        bnez a1, 1b
        j fail
2:      csrci mstatus, MSTATUS_MIE
        CHECK(s2, IRQ_BIT | 3)
        csrr a0, mip
        andi a0, a0, MIP_MSIP
        CHECK(a0, 0)
        li t0, MIP_MSIP
        csrc mie, t0
        CASE(80)                                    /* delegated supervisor software interrupt */
        li s1, 0
        li s4, 0
        li t0, MIP_SSIP
        csrw mideleg, t0
        csrs mie, t0
        la t0, s_irq_handler
        csrw stvec, t0
        csrs mip, MIP_SSIP
        csrsi mstatus, MSTATUS_MIE                  /* delegated: never taken in M */
        nop
        nop
        csrci mstatus, MSTATUS_MIE
        CHECK(s1, 0)
        CHECK(s4, 0)
        csrsi mstatus, MSTATUS_SIE                  /* sstatus.SIE = 1 when entering S */
        TEST_TRAP(81, CAUSE_SUPERVISOR_ECALL, GOTO_PRIV(1, 1f); 1: nop; ecall)
        CASE(82)
        CHECK(s1, 1)
        csrr a0, scause
        CHECK(a0, IRQ_BIT | 1)
        csrr a0, sepc                               /* taken in S before the ecall */
        la a1, 1b
        bltu a0, a1, fail
        addi a1, a1, 2
        bgtu a0, a1, fail
        csrr a0, mip
        andi a0, a0, MIP_SSIP
        CHECK(a0, 0)
        csrw mideleg, zero
        csrw mie, zero
        la t0, trap_default
        csrw mtvec, t0
TEST_END

        .text
/* M handler: skip the trapping instruction (2 or 4 bytes). */
        .balign 4
skip_handler:
        csrr t6, mepc
        lhu t5, 0(t6)
        andi t5, t5, 3
        addi t6, t6, 2
        addi t5, t5, -3
        bnez t5, 1f
        addi t6, t6, 2
1:      csrw mepc, t6
        mret

/* S handler that must not be reached. */
        .balign 4
s_fail_handler:
        j fail

/* S handler for case 44: checks the delegated U ecall, then ecalls to M. */
        .balign 4
s_ecall_handler:
        csrr t5, scause
        CHECK(t5, CAUSE_USER_ECALL)
        csrr t5, sepc
        la t4, u_ecall
        CHECKR(t5, t4)
        csrr t5, stval
        CHECK(t5, 0)
        csrr t5, sstatus
        andi t4, t5, MSTATUS_SPP                    /* came from U */
        CHECK(t4, 0)
        andi t4, t5, MSTATUS_SPIE                   /* SPIE was 1 in U */
        CHECK(t4, MSTATUS_SPIE)
        li s1, 1
s_ecall:
        ecall
        j fail

/* S handler for case 47: checks SPP = S, skips the ebreak with sret. */
        .balign 4
s_skip_handler:
        csrr t5, sstatus
        andi t5, t5, MSTATUS_SPP
        CHECK(t5, MSTATUS_SPP)
        csrr t5, sepc                               /* skip the ebreak (2 or 4 bytes) */
        lhu t4, 0(t5)
        andi t4, t4, 3
        addi t5, t5, 2
        addi t4, t4, -3
        bnez t4, 1f
        addi t5, t5, 2
1:      csrw sepc, t5
        li s1, 1
        sret

/* S handler for case 80: delegated software interrupt. */
        .balign 4
s_irq_handler:
        csrr t5, sstatus
        andi t4, t5, MSTATUS_SPP                    /* interrupted S */
        CHECK(t4, MSTATUS_SPP)
        andi t4, t5, MSTATUS_SIE                    /* SIE cleared, SPIE = old SIE */
        CHECK(t4, 0)
        andi t4, t5, MSTATUS_SPIE
        CHECK(t4, MSTATUS_SPIE)
        li t4, MIP_SSIP
        csrc sip, t4
        li s1, 1
        sret

/* Vector table: entry 0 takes exceptions; 3 (MSI) and 7 (MTI) are expected. */
        .balign 256
        .option push
        .option norvc
vec_table:
        j trap_default
        j fail
        j fail
        j msi_handler
        j fail
        j fail
        j fail
        j mti_handler
        j fail
        j fail
        j fail
        j fail
        .option pop

mti_handler:
        csrr s2, mcause
        csrr s3, mepc
        csrr s5, mstatus
        addi s4, s4, 1
        li t0, -1
        li t1, CLINT_MTIMECMP
        sd t0, 0(t1)
        mret
msi_handler:
        csrr s2, mcause
        csrr s3, mepc
        csrr s5, mstatus
        addi s4, s4, 1
        li t1, CLINT_MSIP
        sw zero, 0(t1)
        mret
