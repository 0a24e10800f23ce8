/* Zicbom and Zicboz (cache-block operations, 64-byte blocks) and Zihintpause. Debian 12's
 * assembler targets rv64gc: the instructions are written with .insn, menvcfg (0x30a) and
 * senvcfg (0x10a) by number. */
#include "test.h"

#define CBO_INVAL(rs1) .insn i 0x0f, 2, x0, rs1, 0
#define CBO_CLEAN(rs1) .insn i 0x0f, 2, x0, rs1, 1
#define CBO_FLUSH(rs1) .insn i 0x0f, 2, x0, rs1, 2
#define CBO_ZERO(rs1)  .insn i 0x0f, 2, x0, rs1, 4
/* FENCE with pred = W, succ = 0. */
#define PAUSE          .insn i 0x0f, 0, x0, x0, 0x10
#define MENVCFG 0x30a
#define SENVCFG 0x10a
#define CBIE_FLUSH (1 << 4)
#define CBIE_INVAL (3 << 4)
#define CBCFE (1 << 6)
#define CBZE (1 << 7)

/* a0..a3 = the dwords at buf + off, + 8, + 56, + 64 (a block's first two and last dword and
 * the next block's first). */
#define READ_BLOCK(off)                                                   \
        la t1, buf;                                                       \
        ld a0, (off)(t1);                                                 \
        ld a1, (off) + 8(t1);                                             \
        ld a2, (off) + 56(t1);                                            \
        ld a3, (off) + 64(t1)

/* Fill buf (192 bytes) with a pattern: dword i = 0x1111111111111111 * (i + 1) mod 2^64. */
#define FILL_BUF                                                          \
        la t1, buf;                                                       \
        li t2, 0;                                                         \
        li t3, 0x1111111111111111;                                        \
1:      addi t2, t2, 1;                                                   \
        mul t4, t2, t3;                                                   \
        sd t4, 0(t1);                                                     \
        addi t1, t1, 8;                                                   \
        li t4, 24;                                                        \
        blt t2, t4, 1b

TEST_BEGIN
        /* ---- M-mode: always allowed ---- */
        CASE(1)                       /* cbo.zero clears the whole block holding the address */
        FILL_BUF
        la a4, buf
        addi a4, a4, 64 + 13
        CBO_ZERO(a4)
        READ_BLOCK(64)
        CHECK(a0, 0)
        CHECK(a1, 0)
        CHECK(a2, 0)
        CHECK(a3, 0x2222222222222221)   /* the next block is untouched: dword 16 */
        READ_BLOCK(0)                 /* and so is the one before */
        CHECK(a0, 0x1111111111111111)
        CHECK(a2, 0x8888888888888888)
        CASE(2)                       /* clean, flush, inval change nothing */
        FILL_BUF
        la a4, buf
        CBO_CLEAN(a4)
        CBO_FLUSH(a4)
        CBO_INVAL(a4)
        READ_BLOCK(0)
        CHECK(a0, 0x1111111111111111)
        CHECK(a1, 0x2222222222222222)
        CHECK(a2, 0x8888888888888888)
        CASE(3)                       /* pause is a hint: it retires and changes nothing */
        li a0, 7
        PAUSE
        CHECK(a0, 7)
        CASE(4)                       /* cbo.* with rd != 0 is reserved */
        TEST_TRAP(5, CAUSE_ILLEGAL_INSN, .insn i 0x0f, 2, x1, x0, 1)
        TEST_TRAP(6, CAUSE_ILLEGAL_INSN, .insn i 0x0f, 2, x0, x0, 3)

        /* ---- menvcfg gates S-mode ---- */
        CASE(10)
        csrw MENVCFG, zero
        csrr a0, MENVCFG
        CHECK(a0, 0)
        la a4, buf
        TEST_TRAP(11, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_ZERO(a4))
        TEST_TRAP(12, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_CLEAN(a4))
        TEST_TRAP(13, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_FLUSH(a4))
        TEST_TRAP(14, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_INVAL(a4))
        CASE(15)
        li t0, CBZE | CBCFE | CBIE_FLUSH
        csrw MENVCFG, t0
        csrr a0, MENVCFG
        CHECK(a0, CBZE | CBCFE | CBIE_FLUSH)
        FILL_BUF
        la a4, buf
        addi a4, a4, 128
        IN_S(16, CBO_ZERO(a4); CBO_CLEAN(a4); CBO_FLUSH(a4); CBO_INVAL(a4))
        CASE(17)
        READ_BLOCK(128)
        CHECK(a0, 0)
        CHECK(a2, 0)
        READ_BLOCK(64)
        CHECK(a2, 0x1111111111111110)   /* dword 15: 0x1111111111111111 * 16, wrapped */
        CASE(18)                          /* CBIE alone opens inval, not the others */
        li t0, CBIE_INVAL
        csrw MENVCFG, t0
        la a4, buf
        IN_S(19, CBO_INVAL(a4))
        TEST_TRAP(20, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_CLEAN(a4))
        TEST_TRAP(21, CAUSE_ILLEGAL_INSN, GOTO_PRIV(1, 1f); 1: CBO_ZERO(a4))

        /* ---- senvcfg gates U-mode as well ---- */
        CASE(30)
        li t0, CBZE | CBCFE | CBIE_INVAL
        csrw MENVCFG, t0
        csrw SENVCFG, zero
        la a4, buf
        TEST_TRAP(31, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: CBO_ZERO(a4))
        TEST_TRAP(32, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: CBO_CLEAN(a4))
        CASE(33)
        li t0, CBZE | CBCFE | CBIE_FLUSH
        csrw SENVCFG, t0
        csrr a0, SENVCFG
        CHECK(a0, CBZE | CBCFE | CBIE_FLUSH)
        FILL_BUF
        la a4, buf
        TEST_TRAP(34, CAUSE_USER_ECALL, GOTO_PRIV(0, 1f); 1: CBO_ZERO(a4); CBO_FLUSH(a4); ecall)
        READ_BLOCK(0)
        CHECK(a0, 0)
        CHECK(a3, 0x9999999999999999)
        CASE(35)                      /* menvcfg closed: U-mode traps whatever senvcfg says */
        csrw MENVCFG, zero
        la a4, buf
        TEST_TRAP(36, CAUSE_ILLEGAL_INSN, GOTO_PRIV(0, 1f); 1: CBO_ZERO(a4))
#ifndef QEMU
        CASE(37)                      /* CBIE's reserved value 2 leaves the field as it was */
        li t0, CBIE_FLUSH
        csrw SENVCFG, t0
        li t0, 2 << 4
        csrw SENVCFG, t0
        csrr a0, SENVCFG
        CHECK(a0, CBIE_FLUSH)
        li t0, (2 << 4) | CBZE
        csrw MENVCFG, t0
        csrr a0, MENVCFG
        CHECK(a0, CBZE)
#endif
        CASE(38)                      /* senvcfg has no PBMTE */
        li t0, -1
        csrw SENVCFG, t0
        csrr a0, SENVCFG
        CHECK(a0, 1 | CBIE_INVAL | CBCFE | CBZE)
TEST_END

        .data
        .align 6
buf:    .fill 24, 8, 0
