/* Svpbmt (memory types in page-table entries, under menvcfg.PBMTE), the reserved PTE bits,
 * and the faults of cache-block operations under Sv39. Gigapages only:
 *   root[1] VA 0x040000000 -> PA 0x80000000 RW,  PBMT = 1 (NC)
 *   root[2] VA 0x080000000 -> PA 0x80000000 RWX  (this program, identity)
 *   root[3] VA 0x0c0000000 -> PA 0x80000000 RW,  PBMT = 3 (reserved)
 *   root[4] VA 0x100000000 -> pointer to pt_l1, PBMT = 2 (a pointer has no type)
 *   root[5] VA 0x140000000 -> PA 0x80000000 RW,  bit 60 set (reserved)
 *   root[6] VA 0x180000000 -> PA 0x80000000 R only
 *   root[7] VA 0x1c0000000    invalid
 *   root[8] VA 0x200000000 -> PA 0x80000000 RW,  bit 63 set (Svnapot's N: not implemented)
 * Addresses below are `data` (at PA 0x80000000 + OFF) seen through each window.
 * QEMU 7.2 (-cpu rv64,svpbmt=on) ignores menvcfg.PBMTE and does not refuse type 3, a typed
 * pointer, the N bit or bits 60..54: those cases are ftvm-only. */
#include "test.h"

#define CBO_CLEAN(rs1) .insn i 0x0f, 2, x0, rs1, 1
#define CBO_ZERO(rs1)  .insn i 0x0f, 2, x0, rs1, 4
#define MENVCFG 0x30a
#define PBMTE (1 << 62)
#define CB_ALL (0xf << 4)
#define PBMT(t) ((t) << 61)
#define GIGA(pa, flags) ((((pa) >> 12) << 10) | (flags))
#define RWAD (PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)

/* root[idx] = the 64-bit PTE v. */
#define SET_PTE(idx, v)                                                   \
        li t0, v;                                                         \
        la t1, pt_root;                                                   \
        sd t0, (idx) * 8(t1)

/* a0 = the virtual address of `data` in the gigapage window at va. */
#define DATA_AT(va)                                                       \
        la a0, data;                                                      \
        li t0, 0x80000000;                                                \
        sub a0, a0, t0;                                                   \
        li t0, va;                                                        \
        add a0, a0, t0

TEST_BEGIN
        CASE(1)
        SET_PTE(1, GIGA(0x80000000, RWAD) | PBMT(1))
        SET_PTE(2, GIGA(0x80000000, RWAD | PTE_X))
        SET_PTE(3, GIGA(0x80000000, RWAD) | PBMT(3))
        MAP_SYM(pt_root, 4, pt_l1, PTE_V)
        la t1, pt_root
        ld t0, 32(t1)
        li t2, PBMT(2)
        or t0, t0, t2
        sd t0, 32(t1)
        SET_PTE(5, GIGA(0x80000000, RWAD) | (1 << 60))
        SET_PTE(6, GIGA(0x80000000, PTE_V | PTE_R | PTE_A))
        SET_PTE(8, GIGA(0x80000000, RWAD) | (1 << 63))
        SET_SATP(pt_root, SATP_SV39)
        li t0, CB_ALL
        csrw MENVCFG, t0

#ifndef QEMU
        /* PBMTE clear: the type bits are reserved. */
        DATA_AT(0x40000000)
        mv s1, a0
        TEST_TRAP(2, CAUSE_LOAD_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: ld a1, 0(s1))
        csrr t5, mtval
        CHECKR(t5, s1)
#endif
        /* PBMTE set: NC is memory as any other here. */
        CASE(3)
        li t0, PBMTE | CB_ALL
        csrw MENVCFG, t0
        csrr a1, MENVCFG
        CHECKR(a1, t0)
        DATA_AT(0x40000000)
        mv s1, a0
        IN_S(4, ld a1, 0(s1); li a2, 0x5a5a; sd a2, 8(s1))
        CASE(5)
        CHECK(a1, 0x0123456789abcdef)
        la t1, data
        ld a2, 8(t1)
        CHECK(a2, 0x5a5a)
#ifndef QEMU
        DATA_AT(0xc0000000)           /* type 3 is reserved */
        mv s1, a0
        TEST_TRAP(6, CAUSE_LOAD_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: ld a1, 0(s1))
        csrr t5, mtval
        CHECKR(t5, s1)
        DATA_AT(0x100000000)          /* a pointer with a type */
        mv s1, a0
        TEST_TRAP(7, CAUSE_LOAD_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: ld a1, 0(s1))
        DATA_AT(0x200000000)          /* N without Svnapot */
        mv s1, a0
        TEST_TRAP(9, CAUSE_LOAD_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: ld a1, 0(s1))
        DATA_AT(0x140000000)          /* bit 60 is reserved */
        mv s1, a0
        TEST_TRAP(8, CAUSE_LOAD_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: ld a1, 0(s1))
#endif

#ifndef QEMU
        /* ---- cache-block operations fault as stores, at the block's address (QEMU 7.2 has
         * no Zicbom or Zicboz) ---- */
        DATA_AT(0x180000000)          /* read-only: clean may, zero may not */
        mv s1, a0
        IN_S(10, CBO_CLEAN(s1))
        addi s1, s1, 72               /* inside the second block of `data` */
        TEST_TRAP(11, CAUSE_STORE_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: CBO_ZERO(s1))
        csrr t5, mtval
        andi s1, s1, -64
        CHECKR(t5, s1)
        DATA_AT(0x1c0000000)          /* invalid: every operation faults */
        mv s1, a0
        TEST_TRAP(12, CAUSE_STORE_PAGE_FAULT, GOTO_PRIV(1, 1f); 1: CBO_CLEAN(s1))
        csrr t5, mtval
        CHECKR(t5, s1)
        CASE(13)                      /* nothing was zeroed */
        la t1, data
        ld a2, 72(t1)
        CHECK(a2, 0x7777)
#endif
TEST_END

        .data
        .align 12
pt_root: .fill 512, 8, 0
pt_l1:   .fill 512, 8, 0
        .align 6
data:   .dword 0x0123456789abcdef, 0, 0, 0, 0, 0, 0, 0
        .dword 0, 0x7777, 0, 0, 0, 0, 0, 0
