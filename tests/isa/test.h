/* test.h: macros for ftvm's bare-metal ISA tests (M-mode, RAM at 0x80000000).
 *
 * Layout of a test:
 *     #include "test.h"
 *     TEST_BEGIN
 *       TEST_RR(1, add, 3, 1, 2)
 *       ...
 *     TEST_END
 *     .data  ...
 *
 * Result protocol:
 *   ftvm (default): pass = sd 1 to `tohost`; fail at case N = sd (N << 1) | 1.
 *   -DQEMU:         SiFive test finisher at 0x100000: pass = sw 0x5555,
 *                   fail N = sw (N << 16) | 0x3333 (QEMU exits with status N).
 *
 * Register conventions:
 *   gp (x3)  number of the case being run (TESTNUM); reported on failure.
 *   tp (x4)  expected-trap landing address, 0 when no trap is expected.
 *   t6 (x31) scratch of the macros and of the default trap handler:
 *            never keep a value in t6 across a macro.
 * Case numbers must be 1..250 (exit statuses are 8 bits; 0 would be a pass).
 */
#ifndef FTVM_TEST_H
#define FTVM_TEST_H

#define TESTNUM gp

/* Useful constants. */
#define MSTATUS_SIE   (1 << 1)
#define MSTATUS_MIE   (1 << 3)
#define MSTATUS_SPIE  (1 << 5)
#define MSTATUS_MPIE  (1 << 7)
#define MSTATUS_SPP   (1 << 8)
#define MSTATUS_MPP   (3 << 11)
#define MSTATUS_MPP_S (1 << 11)
#define MSTATUS_FS    (3 << 13)
#define MSTATUS_MPRV  (1 << 17)
#define MSTATUS_SUM   (1 << 18)
#define MSTATUS_MXR   (1 << 19)

#define CAUSE_MISALIGNED_FETCH 0
#define CAUSE_FETCH_ACCESS     1
#define CAUSE_ILLEGAL_INSN     2
#define CAUSE_BREAKPOINT       3
#define CAUSE_MISALIGNED_LOAD  4
#define CAUSE_LOAD_ACCESS      5
#define CAUSE_MISALIGNED_STORE 6
#define CAUSE_STORE_ACCESS     7
#define CAUSE_USER_ECALL       8
#define CAUSE_SUPERVISOR_ECALL 9
#define CAUSE_MACHINE_ECALL    11
#define CAUSE_FETCH_PAGE_FAULT 12
#define CAUSE_LOAD_PAGE_FAULT  13
#define CAUSE_STORE_PAGE_FAULT 15

/* ---- program frame --------------------------------------------------- */

/* Entry code: default trap handler, PMP open for S/U (QEMU needs an entry),
 * no trap expected, case 0. */
#define TEST_BEGIN                                                        \
        .section .text.init, "ax";                                        \
        .globl _start;                                                    \
_start:                                                                   \
        la t0, trap_default;                                              \
        csrw mtvec, t0;                                                   \
        li t0, -1;                                                        \
        csrw pmpaddr0, t0;                                                \
        li t0, 0x1f;                                                      \
        csrw pmpcfg0, t0;                                                 \
        li tp, 0;                                                         \
        li TESTNUM, 0;                                                    \
        j test_main;                                                      \
        .text;                                                            \
test_main:

/* Exit paths, default trap handler, tohost. */
#define TEST_END                                                          \
        PASS;                                                             \
        .align 2;                                                         \
trap_default:                                                             \
        beqz tp, fail;                                                    \
        mv t6, tp;                                                        \
        li tp, 0;                                                         \
        jr t6;                                                            \
fail:                                                                     \
        bnez TESTNUM, 1f;                                                 \
        li TESTNUM, 255;                                                  \
1:      FAIL_GP;                                                          \
        TOHOST_SECTION

#define TOHOST_SECTION                                                    \
        .pushsection .tohost, "aw", @progbits;                            \
        .align 3; .globl tohost; tohost: .dword 0;                        \
        .align 3; .globl fromhost; fromhost: .dword 0;                    \
        .popsection

#ifdef QEMU
#define PASS                                                              \
        li t0, 0x100000;                                                  \
        li t1, 0x5555;                                                    \
        sw t1, 0(t0);                                                     \
        j .
#define FAIL_GP                                                           \
        li t0, 0x100000;                                                  \
        slli t1, TESTNUM, 16;                                             \
        li t2, 0x3333;                                                    \
        or t1, t1, t2;                                                    \
        sw t1, 0(t0);                                                     \
        j .
#else
#define PASS                                                              \
        li t1, 1;                                                         \
        la t0, tohost;                                                    \
        sd t1, 0(t0);                                                     \
        j .
#define FAIL_GP                                                           \
        slli t1, TESTNUM, 1;                                              \
        ori t1, t1, 1;                                                    \
        la t0, tohost;                                                    \
        sd t1, 0(t0);                                                     \
        j .
#endif

/* ---- cases ------------------------------------------------------------- */

/* Start case n (numbers are checked and must be unique). */
#define CASE(n)                                                           \
        .if (n) < 1 || (n) > 250; .error "case number out of range"; .endif; \
test_ ## n:                                                               \
        li TESTNUM, n

/* Fail the current case unless register r equals the constant v. */
#define CHECK(r, v)                                                       \
        li t6, v;                                                         \
        bne r, t6, fail

/* Fail the current case unless registers a and b are equal. */
#define CHECKR(a, b)                                                      \
        bne a, b, fail

/* Generic case: run code, then register r must equal v. */
#define TEST_CASE(n, r, v, code...)                                       \
        CASE(n);                                                          \
        code;                                                             \
        CHECK(r, v)

/* Register-register op: rd = op(v1, v2); also with rd aliasing a source. */
#define TEST_RR(n, op, result, v1, v2)                                    \
        CASE(n);                                                          \
        li a1, v1;                                                        \
        li a2, v2;                                                        \
        op a0, a1, a2;                                                    \
        CHECK(a0, result);                                                \
        op a1, a1, a2;                                                    \
        CHECK(a1, result)

/* Register-immediate op. */
#define TEST_RI(n, op, result, v1, imm)                                   \
        CASE(n);                                                          \
        li a1, v1;                                                        \
        op a0, a1, imm;                                                   \
        CHECK(a0, result);                                                \
        op a1, a1, imm;                                                   \
        CHECK(a1, result)

/* Expect a synchronous trap to M-mode with mcause == cause somewhere in code;
 * execution continues after the case (M-mode, MIE cleared by the trap).
 * If code completes without trapping the case fails. */
#define TEST_TRAP(n, cause, code...)                                      \
        CASE(n);                                                          \
        la tp, 99f;                                                       \
        code;                                                             \
        j fail;                                                           \
99:     csrr t5, mcause;                                                  \
        CHECK(t5, cause)

/* ---- privilege modes and page tables --------------------------------- */

#define PTE_V 0x01
#define PTE_R 0x02
#define PTE_W 0x04
#define PTE_X 0x08
#define PTE_U 0x10
#define PTE_A 0x40
#define PTE_D 0x80
#define SATP_SV39 (8 << 60)
#define SATP_SV48 (9 << 60)

/* Translate through the root table `table` in `mode` (SATP_SV39, SATP_SV48); t0 = the satp
 * value written. */
#define SET_SATP(table, mode)                                             \
        la t0, table;                                                     \
        srli t0, t0, 12;                                                  \
        li t1, mode;                                                      \
        or t0, t0, t1;                                                    \
        csrw satp, t0;                                                    \
        sfence.vma

/* table[idx] = PTE for physical address of symbol `sym` with `flags`. */
#define MAP_SYM(table, idx, sym, flags)                                   \
        la t0, sym;                                                       \
        srli t0, t0, 12;                                                  \
        slli t0, t0, 10;                                                  \
        ori t0, t0, flags;                                                \
        la t1, table;                                                     \
        sd t0, (idx) * 8(t1)

/* table[idx] = PTE for the physical address pa with `flags`. */
#define MAP_PA(table, idx, pa, flags)                                     \
        li t0, ((pa) >> 12) << 10 | (flags);                              \
        la t1, table;                                                     \
        sd t0, (idx) * 8(t1)

/* Enter privilege mode `mpp` (0 = U, 1 = S, 3 = M) at `target` via mret. */
#define GOTO_PRIV(mpp, target)                                            \
        li t0, MSTATUS_MPP;                                               \
        csrc mstatus, t0;                                                 \
        li t0, (mpp) << 11;                                               \
        csrs mstatus, t0;                                                 \
        la t0, target;                                                    \
        csrw mepc, t0;                                                    \
        mret

/* Enter privilege mode `mpp` at the (virtual) address `va`. */
#define GOTO_PRIV_VA(mpp, va)                                             \
        li t0, MSTATUS_MPP;                                               \
        csrc mstatus, t0;                                                 \
        li t0, (mpp) << 11;                                               \
        csrs mstatus, t0;                                                 \
        li t0, va;                                                        \
        csrw mepc, t0;                                                    \
        mret

/* Run code in S-mode; it must complete without a trap (back to M by ecall). */
#define IN_S(n, code...)                                                  \
        TEST_TRAP(n, CAUSE_SUPERVISOR_ECALL, GOTO_PRIV(1, 98f); 98: code; ecall)

/* Run code in S-mode; its access at label 97 must trap to M with `cause`,
 * mtval = va and mepc = 97. */
#define S_FAULT(n, cause, va, code...)                                    \
        TEST_TRAP(n, cause, GOTO_PRIV(1, 98f); 98: code);                 \
        csrr t5, mtval;                                                   \
        CHECK(t5, va);                                                    \
        csrr t5, mepc;                                                    \
        la t4, 97b;                                                       \
        CHECKR(t5, t4)

/* ---- floating point ---------------------------------------------------- */

/* Set mstatus.FS = Initial so that FP instructions may run. */
#define FP_ENABLE                                                         \
        li t0, 1 << 13;                                                   \
        csrs mstatus, t0

/* Load a single (NaN-boxed by fmv.w.x) or double from a bit pattern. */
#define LOAD_S(f, v)  li t0, v; fmv.w.x f, t0
#define LOAD_D(f, v)  li t0, v; fmv.d.x f, t0

/* f must hold the single with bit pattern v, properly NaN-boxed. */
#define CHECK_S(f, v)                                                     \
        fmv.x.d t1, f;                                                    \
        srai t2, t1, 32;                                                  \
        CHECK(t2, -1);                                                    \
        sext.w t1, t1;                                                    \
        li t6, v;                                                         \
        sext.w t6, t6;                                                    \
        bne t1, t6, fail
/* f must hold the double with bit pattern v. */
#define CHECK_D(f, v)                                                     \
        fmv.x.d t1, f;                                                    \
        CHECK(t1, v)
/* The accrued exception flags must be exactly v (NV=16 DZ=8 OF=4 UF=2 NX=1). */
#define CHECK_FLAGS(v)                                                    \
        frflags t1;                                                       \
        CHECK(t1, v)

/* fa0, fa1, fa2 = a, b, c; flags cleared; insn writes fa3 (or a0). */
#define TEST_FP_S(n, flags, res, a, b, c, insn...)                        \
        CASE(n); LOAD_S(fa0, a); LOAD_S(fa1, b); LOAD_S(fa2, c);          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_S(fa3, res)
#define TEST_FP_D(n, flags, res, a, b, c, insn...)                        \
        CASE(n); LOAD_D(fa0, a); LOAD_D(fa1, b); LOAD_D(fa2, c);          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_D(fa3, res)
#define TEST_FP_INT_S(n, flags, res, a, b, insn...)                       \
        CASE(n); LOAD_S(fa0, a); LOAD_S(fa1, b);                          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK(a0, res)
#define TEST_FP_INT_D(n, flags, res, a, b, insn...)                       \
        CASE(n); LOAD_D(fa0, a); LOAD_D(fa1, b);                          \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK(a0, res)
/* a0 = x; insn converts it into fa3. */
#define TEST_INT_FP_S(n, flags, res, x, insn...)                          \
        CASE(n); li a0, x;                                                \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_S(fa3, res)
#define TEST_INT_FP_D(n, flags, res, x, insn...)                          \
        CASE(n); li a0, x;                                                \
        fsflags zero; insn; CHECK_FLAGS(flags); CHECK_D(fa3, res)

#endif
