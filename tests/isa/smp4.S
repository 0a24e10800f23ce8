/* Four harts (run with --smp 4; QEMU: -smp 4), all starting here in M-mode: each adds 1 to a
 * shared counter ROUNDS times with AMOADD and ROUNDS times with an LR/SC loop, then they meet
 * at a barrier and hart 0 checks both totals. On ftvm the harts take turns in slices, and a
 * slice that ends between an LR and its SC must make the SC fail (another hart may have
 * stored in between): the LR/SC total is exact only then. */
#include "test.h"

#define NHARTS 4
#define ROUNDS 5000

TEST_BEGIN
        csrr s0, mhartid
        li s1, ROUNDS
        li s4, 0
        la s2, amo_counter
        la s3, lrsc_counter
        li t0, 1
1:      amoadd.d zero, t0, (s2)
        andi t3, s1, 7          /* a delay of 1 to 8 turns: slices end all over the loop */
5:      addi t3, t3, -1
        bgez t3, 5b
2:      lr.d t1, (s3)
        addi t1, t1, 1
        sc.d t2, t1, (s3)
        add s4, s4, t2         /* failed SCs */
        bnez t2, 2b
        addi s1, s1, -1
        bnez s1, 1b
        /* Each hart marks its own slot: plain stores to one page from every hart. */
        la t0, slots
        slli t1, s0, 3
        add t0, t0, t1
        addi t1, s0, 100
        sd t1, 0(t0)
        la t0, sc_failures
        amoadd.d zero, s4, (t0)
        /* The barrier. */
        la t0, arrived
        li t1, 1
        amoadd.d zero, t1, (t0)
        li t2, NHARTS
3:      ld t1, 0(t0)
        blt t1, t2, 3b
        bnez s0, park
        CASE(1)
        ld a0, 0(s2)
        CHECK(a0, NHARTS * ROUNDS)
        CASE(2)
        ld a0, 0(s3)
        CHECK(a0, NHARTS * ROUNDS)
        CASE(3)
        la t0, slots
        ld a0, 0(t0)
        CHECK(a0, 100)
        ld a0, 24(t0)
        CHECK(a0, 103)
#ifndef QEMU
        CASE(4)                        /* slices did end between an LR and its SC */
        la t0, sc_failures
        ld a0, 0(t0)
        beqz a0, fail
#endif
        j 4f
        /* The other harts wait for good (nothing is enabled to wake them). */
park:   wfi
        j park
4:
TEST_END

        .data
        .align 3
amo_counter:  .dword 0
lrsc_counter: .dword 0
arrived:      .dword 0
sc_failures:  .dword 0
slots:        .fill NHARTS, 8, 0
