/* mmu: Sv39 and Sv48 translation from S- and U-mode: 4K pages, megapages,
 * gigapages, a terapage, permissions (R/W/X/U, SUM, MXR, MPRV), page faults
 * with their mtval, hardware A/D updates, sfence.vma, delegated page faults.
 *
 * Sv39 layout (root table pt_root):
 *   root[0]  gigapage  VA 0x00000000 -> PA 0          RW     (devices: finisher, CLINT)
 *   root[1]  -> pt_l1  VA 0x40000000..0x7fffffff
 *   root[2]  gigapage  VA 0x80000000 -> PA 0x80000000 RWX    (this program, identity)
 *   pt_l1[0] -> pt_l0  VA 0x40000000..0x401fffff, 4K pages:
 *     [0] 0x40000000 page0  RW        [6]  0x40006000 xpage  X only
 *     [1] 0x40001000 page1  R         [7]  0x40007000 page0  RW (sfence test)
 *     [2] 0x40002000 invalid          [8]  0x40008000 page0  W without R (reserved)
 *     [3] 0x40003000 page2  RW U      [9]  0x40009000 upage  RX U (U-mode code)
 *     [4] 0x40004000 page3  RW, A=D=0 [10] 0x4000a000 page1  RW, A=1 D=0
 *     [5] 0x40005000 page0  R (no X)
 *   pt_l1[1] 0x40200000 leaf with a misaligned PPN (page fault)
 *   pt_l1[2] 0x40400000 megapage -> PA 0x80000000 R
 * Sv48 root pt_root48: [0] and [1] -> pt_root (so VA x and x + 2^39 alias),
 *   [2] terapage VA 0x10000000000 -> PA 0 RW.
 * Non-leaf and device/program mappings have A (and D) preset.
 */
#include "test.h"

#define VA_RW     0x40000000
#define VA_RO     0x40001000
#define VA_INV    0x40002000
#define VA_USER   0x40003000
#define VA_AD     0x40004000
#define VA_NOX    0x40005000
#define VA_XONLY  0x40006000
#define VA_SF     0x40007000
#define VA_WNR    0x40008000
#define VA_UCODE  0x40009000
#define VA_DIRTY  0x4000a000
#define VA_MISAL  0x40200000
#define VA_MEGA   0x40400000

/* Run code in S-mode; it must fail to fetch from va: instruction page
 * fault with mepc = mtval = va. */
#define S_IFAULT(n, va, code...)                                          \
        TEST_TRAP(n, CAUSE_FETCH_PAGE_FAULT, GOTO_PRIV(1, 98f); 98: code); \
        csrr t5, mtval;                                                   \
        CHECK(t5, va);                                                    \
        csrr t5, mepc;                                                    \
        CHECK(t5, va)

/* a0 = the PTE pt_l0[idx] as seen physically from M. */
#define READ_PTE(idx)                                                     \
        la t1, pt_l0;                                                     \
        ld a0, (idx) * 8(t1)

TEST_BEGIN
        /* ---- build the tables (M-mode, physical) ---- */
        CASE(1)
        MAP_PA(pt_root, 0, 0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
        MAP_SYM(pt_root, 1, pt_l1, PTE_V)
        MAP_PA(pt_root, 2, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)
        MAP_SYM(pt_l1, 0, pt_l0, PTE_V)
        MAP_SYM(pt_l1, 1, page0, PTE_V | PTE_R | PTE_A)
        MAP_PA(pt_l1, 2, 0x80000000, PTE_V | PTE_R | PTE_A)
        MAP_SYM(pt_l0, 0, page0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
        MAP_SYM(pt_l0, 1, page1, PTE_V | PTE_R | PTE_A)
        MAP_SYM(pt_l0, 3, page2, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D)
        MAP_SYM(pt_l0, 4, page3, PTE_V | PTE_R | PTE_W)
        MAP_SYM(pt_l0, 5, page0, PTE_V | PTE_R | PTE_A)
        MAP_SYM(pt_l0, 6, xpage, PTE_V | PTE_X | PTE_A)
        MAP_SYM(pt_l0, 7, page0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
        MAP_SYM(pt_l0, 8, page0, PTE_V | PTE_W | PTE_A | PTE_D)
        MAP_SYM(pt_l0, 9, upage, PTE_V | PTE_R | PTE_X | PTE_U | PTE_A)
        MAP_SYM(pt_l0, 10, page1, PTE_V | PTE_R | PTE_W | PTE_A)
        MAP_SYM(pt_root48, 0, pt_root, PTE_V)
        MAP_SYM(pt_root48, 1, pt_root, PTE_V)
        MAP_PA(pt_root48, 2, 0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
        SET_SATP(pt_root, SATP_SV39)
        csrr a0, satp
        CHECKR(a0, t0)

        /* ---- basic translation in S-mode ---- */
        IN_S(2, la a1, page0; ld a0, 0(a1))                 /* identity gigapage */
        CHECK(a0, 0x1111111111111111)
        IN_S(3, li a1, VA_RW; ld a0, 0(a1))                 /* 4K page elsewhere */
        CHECK(a0, 0x1111111111111111)
        IN_S(4, li a1, VA_RW; li a2, 0x5555; sd a2, 8(a1); lw a0, 8(a1))
        CHECK(a0, 0x5555)
        CASE(5)                                             /* ... it went to page0 */
        la a1, page0
        ld a0, 8(a1)
        CHECK(a0, 0x5555)
        IN_S(6, li a1, VA_RO + 8; ld a0, -8(a1))            /* read-only page is readable */
        CHECK(a0, 0x2222222222222222)
        IN_S(7, la a1, page0; li t0, 0x80000000; sub a1, a1, t0; li t0, VA_MEGA; add a1, a1, t0; ld a0, 0(a1))
        CHECK(a0, 0x1111111111111111)                       /* megapage */
        IN_S(8, li a1, VA_RW + 0xffe; lw a0, 0(a1))         /* misaligned across two pages */
        CHECK(a0, 0x22220000)

        /* ---- page faults: cause, mtval, mepc ---- */
        S_FAULT(10, CAUSE_STORE_PAGE_FAULT, VA_RO + 0x10, li a1, VA_RO; 97: sd a1, 0x10(a1))
        CASE(11)                                            /* not written */
        la a1, page1
        ld a0, 0x10(a1)
        CHECK(a0, 0)
        S_FAULT(12, CAUSE_LOAD_PAGE_FAULT, VA_INV + 8, li a1, VA_INV; 97: ld a0, 8(a1))
        S_FAULT(13, CAUSE_STORE_PAGE_FAULT, VA_INV, li a1, VA_INV; 97: sw a1, 0(a1))
        S_FAULT(14, CAUSE_STORE_PAGE_FAULT, VA_RO, li a1, VA_RO; 97: amoadd.d a0, a1, (a1))  /* AMO: store fault */
        S_IFAULT(15, VA_NOX, li a1, VA_NOX; jalr a1)
        S_IFAULT(17, VA_INV, li a1, VA_INV; jalr a1)
        S_FAULT(19, CAUSE_LOAD_PAGE_FAULT, VA_WNR, li a1, VA_WNR; 97: ld a0, 0(a1))    /* W without R */
        S_FAULT(20, CAUSE_STORE_PAGE_FAULT, VA_WNR, li a1, VA_WNR; 97: sd a0, 0(a1))
        S_FAULT(21, CAUSE_LOAD_PAGE_FAULT, VA_MISAL, li a1, VA_MISAL; 97: ld a0, 0(a1)) /* misaligned superpage */
        S_FAULT(22, CAUSE_LOAD_PAGE_FAULT, 0x0000004000000000, li a1, 0x0000004000000000; 97: ld a0, 0(a1)) /* non-canonical */
        S_FAULT(23, CAUSE_LOAD_PAGE_FAULT, 0xffffffc000000000, li a1, 0xffffffc000000000; 97: ld a0, 0(a1)) /* canonical, unmapped */
        S_FAULT(24, CAUSE_LOAD_PAGE_FAULT, 0x0000008000000000, li a1, 0x0000008000000000; 97: lw a0, 0(a1)) /* Sv48-only VA */

        /* ---- execute-only pages and MXR ---- */
        IN_S(30, li a1, VA_XONLY; li a0, 0; jalr a1)        /* runs: a0 = 42 */
        CHECK(a0, 42)
        S_FAULT(31, CAUSE_LOAD_PAGE_FAULT, VA_XONLY, li a1, VA_XONLY; 97: lw a0, 0(a1))
        CASE(32)
        li t0, MSTATUS_MXR
        csrs mstatus, t0
        IN_S(33, li a1, VA_XONLY; lw a0, 0(a1))             /* MXR: X pages readable */
        CHECK(a0, 0x02a00513)
        S_FAULT(34, CAUSE_STORE_PAGE_FAULT, VA_XONLY, li a1, VA_XONLY; 97: sw a0, 0(a1))
        CASE(35)
        li t0, MSTATUS_MXR
        csrc mstatus, t0

        /* ---- U pages from S: SUM ---- */
        S_FAULT(40, CAUSE_LOAD_PAGE_FAULT, VA_USER, li a1, VA_USER; 97: ld a0, 0(a1))
        S_FAULT(41, CAUSE_STORE_PAGE_FAULT, VA_USER, li a1, VA_USER; 97: sd a0, 0(a1))
        CASE(42)
        li t0, MSTATUS_SUM
        csrs mstatus, t0
        IN_S(43, li a1, VA_USER; ld a0, 0(a1))
        CHECK(a0, 0x3333333333333333)
        IN_S(44, li a1, VA_USER; li a2, 0x66; sd a2, 16(a1); ld a0, 16(a1))
        CHECK(a0, 0x66)
        S_IFAULT(45, VA_UCODE, li a1, VA_UCODE; jalr a1)   /* U code is never executable from S */
        CASE(46)
        li t0, MSTATUS_SUM
        csrc mstatus, t0

        /* ---- U-mode ---- */
        TEST_TRAP(50, CAUSE_USER_ECALL, li a1, 0; li a0, 0; GOTO_PRIV_VA(0, VA_UCODE))
        CHECK(a0, 7)
        TEST_TRAP(51, CAUSE_USER_ECALL, li a1, VA_USER; GOTO_PRIV_VA(0, VA_UCODE))
        CHECK(a0, 0x3333333333333333)                       /* U page from U */
        TEST_TRAP(52, CAUSE_LOAD_PAGE_FAULT, li a1, VA_RW; GOTO_PRIV_VA(0, VA_UCODE))
        TEST_CASE(53, t5, VA_RW, csrr t5, mtval)            /* S page from U */
        TEST_TRAP(54, CAUSE_FETCH_PAGE_FAULT, GOTO_PRIV(0, 1f); 1: nop)   /* S code from U */
        CASE(55)
        csrr t5, mepc
        la a1, 1b
        CHECKR(t5, a1)
        csrr t5, mtval
        CHECKR(t5, a1)

        /* ---- hardware A/D updates ---- */
        CASE(60)                                            /* A = D = 0 initially */
        READ_PTE(4)
        andi a0, a0, PTE_A | PTE_D
        CHECK(a0, 0)
        IN_S(61, li a1, VA_AD; ld a0, 0(a1))
        CHECK(a0, 0x4444444444444444)
        CASE(62)                                            /* a read sets A only */
        READ_PTE(4)
        andi a0, a0, PTE_A | PTE_D
        CHECK(a0, PTE_A)
        IN_S(63, li a1, VA_AD; li a2, 0x77; sd a2, 8(a1))
        CASE(64)                                            /* a write sets D */
        READ_PTE(4)
        andi a0, a0, PTE_A | PTE_D
        CHECK(a0, PTE_A | PTE_D)
        la a1, page3
        ld a0, 8(a1)
        CHECK(a0, 0x77)
        IN_S(65, li a1, VA_DIRTY; ld a0, 0(a1))             /* A = 1, D = 0: reads leave D alone */
        CASE(66)
        READ_PTE(10)
        andi a0, a0, PTE_A | PTE_D
        CHECK(a0, PTE_A)
        IN_S(67, li a1, VA_DIRTY; li a2, 0x88; sw a2, 0x20(a1))
        CASE(68)
        READ_PTE(10)
        andi a0, a0, PTE_A | PTE_D
        CHECK(a0, PTE_A | PTE_D)

        /* ---- sfence.vma (page table edited from S through the identity map) ---- */
        IN_S(70, li a1, VA_SF; ld a0, 0(a1))                /* page0, now in the TLB */
        CHECK(a0, 0x1111111111111111)
        IN_S(71, la a3, pt_l0; la a2, page1; srli a2, a2, 2; ori a2, a2, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D; sd a2, 7 * 8(a3); sfence.vma; li a1, VA_SF; ld a0, 0(a1))
        CHECK(a0, 0x2222222222222222)                       /* global fence */
        IN_S(72, la a3, pt_l0; la a2, page0; srli a2, a2, 2; ori a2, a2, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D; sd a2, 7 * 8(a3); li a1, VA_SF; sfence.vma a1; ld a0, 0(a1))
        CHECK(a0, 0x1111111111111111)                       /* fence of one address */
        S_FAULT(73, CAUSE_LOAD_PAGE_FAULT, VA_SF, la a3, pt_l0; sd zero, 7 * 8(a3); sfence.vma zero, zero; li a1, VA_SF; 97: ld a0, 0(a1))

        /* ---- MPRV: M-mode loads and stores translated with MPP's privilege ---- */
        CASE(80)
        li t0, MSTATUS_MPP
        csrc mstatus, t0
        li t0, MSTATUS_MPRV | MSTATUS_MPP_S
        csrs mstatus, t0
        li a1, VA_RW
        ld a0, 0(a1)
        li t0, MSTATUS_MPRV
        csrc mstatus, t0
        CHECK(a0, 0x1111111111111111)
        CASE(81)                                            /* MPRV with MPP = U: S page faults */
        li t0, MSTATUS_MPP
        csrc mstatus, t0
        li t0, MSTATUS_MPRV
        csrs mstatus, t0
        la tp, 1f
        li a1, VA_RW
        ld a0, 0(a1)
        j fail
1:      li t0, MSTATUS_MPRV
        csrc mstatus, t0
        csrr t5, mcause
        CHECK(t5, CAUSE_LOAD_PAGE_FAULT)

        /* ---- page fault delegated to S ---- */
        CASE(85)
        li t0, (1 << CAUSE_LOAD_PAGE_FAULT) | (1 << CAUSE_STORE_PAGE_FAULT)
        csrw medeleg, t0
        la t0, s_pf_handler
        csrw stvec, t0
        li s1, 0
        IN_S(86, li a1, VA_INV + 0x30; ld a0, 0(a1); li a1, VA_RO; sd a1, 0(a1))
        CHECK(s1, 2)                                        /* the S handler saw both */
        csrw medeleg, zero

        /* ---- Sv48 ---- */
        CASE(90)
        SET_SATP(pt_root48, SATP_SV48)
        csrr a0, satp
        CHECKR(a0, t0)
        IN_S(91, li a1, VA_RW; ld a0, 0(a1))
        CHECK(a0, 0x1111111111111111)
        IN_S(92, li a1, (1 << 39) + VA_RW; ld a0, 0(a1))    /* via root48[1] */
        CHECK(a0, 0x1111111111111111)
        IN_S(93, la a1, page1; li t0, 0x10000000000; add a1, a1, t0; ld a0, 0(a1))
        CHECK(a0, 0x2222222222222222)                       /* terapage */
        S_FAULT(94, CAUSE_LOAD_PAGE_FAULT, 0x0000800000000000, li a1, 0x0000800000000000; 97: ld a0, 0(a1)) /* non-canonical */
        S_FAULT(95, CAUSE_LOAD_PAGE_FAULT, (3 << 39), li a1, (3 << 39); 97: ld a0, 0(a1))   /* root48[3] invalid */
        S_FAULT(96, CAUSE_STORE_PAGE_FAULT, (1 << 39) + VA_RO, li a1, (1 << 39) + VA_RO; 97: sd a0, 0(a1))
        CASE(97)                                            /* back to Bare: S sees physical memory */
        csrw satp, zero
        sfence.vma
        IN_S(98, la a1, page2; ld a0, 0(a1))
        CHECK(a0, 0x3333333333333333)
TEST_END

        .text
/* S handler: count page faults whose scause/stval match, skip the access. */
        .balign 4
s_pf_handler:
        csrr t5, scause
        csrr t4, stval
        li t6, CAUSE_LOAD_PAGE_FAULT
        bne t5, t6, 1f
        li t6, VA_INV + 0x30
        bne t4, t6, fail
        j 2f
1:      li t6, CAUSE_STORE_PAGE_FAULT
        bne t5, t6, fail
        li t6, VA_RO
        bne t4, t6, fail
2:      csrr t5, sstatus
        andi t5, t5, MSTATUS_SPP
        beqz t5, fail
        addi s1, s1, 1
        csrr t5, sepc                               /* skip the access (2 or 4 bytes) */
        lhu t4, 0(t5)
        andi t4, t4, 3
        addi t5, t5, 2
        addi t4, t4, -3
        bnez t4, 1f
        addi t5, t5, 2
1:      csrw sepc, t5
        sret

        .balign 4096
        .option push
        .option norvc
xpage:  addi a0, zero, 42
        ret
        .balign 4096
/* U-mode code: a0 = 7, or the dword at a1 if a1 != 0; then ecall. */
upage:  li a0, 7
        beqz a1, 1f
        ld a0, 0(a1)
1:      ecall
        .option pop

        .data
        .balign 4096
pt_root:   .zero 4096
pt_l1:     .zero 4096
pt_l0:     .zero 4096
pt_root48: .zero 4096
page0:  .dword 0x1111111111111111
        .balign 4096
page1:  .dword 0x2222222222222222, 0, 0, 0, 0, 0
        .balign 4096
page2:  .dword 0x3333333333333333
        .balign 4096
page3:  .dword 0x4444444444444444
        .balign 4096
