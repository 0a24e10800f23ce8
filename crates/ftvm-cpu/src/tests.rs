//! Unit tests that drive the hart on a flat RAM bus.

use crate::*;

pub(crate) struct FlatBus {
    pub ram: Vec<u8>,
}

impl Bus for FlatBus {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }
    fn ram_base(&self) -> u64 {
        0x8000_0000
    }
    fn mmio_read(&mut self, _: u64, _: u8, _: u64) -> Option<u64> {
        None
    }
    fn mmio_write(&mut self, _: u64, _: u8, _: u64, _: u64) -> bool {
        false
    }
    fn time(&mut self, count: u64) -> u64 {
        count
    }
}

/// Run 32-bit instruction words at 0x8000_0000 in M-mode, one step each.
fn run_words(words: &[u32]) -> (Hart, FlatBus) {
    let mut bus = FlatBus {
        ram: vec![0; 1 << 20],
    };
    for (i, w) in words.iter().enumerate() {
        bus.ram[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let mut h = Hart::new(0);
    h.pc = 0x8000_0000;
    h.csr.mstatus |= csr::MSTATUS_FS;
    h.run(&mut bus, words.len() as u64);
    (h, bus)
}

#[test]
fn addi_and_count() {
    // addi a0, zero, 5; addi a0, a0, -7
    let (h, _) = run_words(&[0x00500513, 0xff950513]);
    assert_eq!(h.x[10] as i64, -2);
    assert_eq!(h.count, 2);
    assert_eq!(h.pc, 0x8000_0008);
}

#[test]
fn div_corner_cases() {
    // li a0,-1<<63 via lui/slli; li a1,-1; div a2,a0,a1; rem a3,a0,a1; divu a4,a0,zero
    let (h, _) = run_words(&[
        0x00100513, // li a0,1
        0x03f51513, // slli a0,a0,63
        0xfff00593, // li a1,-1
        0x02b54633, // div a2,a0,a1
        0x02b566b3, // rem a3,a0,a1
        0x02055733, // divu a4,a0,zero
    ]);
    assert_eq!(h.x[12], 1 << 63);
    assert_eq!(h.x[13], 0);
    assert_eq!(h.x[14], u64::MAX);
}

#[test]
fn illegal_instruction_traps_and_counts() {
    let (h, _) = run_words(&[0xffff_ffff]);
    assert_eq!(h.csr.mcause, cause::ILLEGAL_INSN);
    assert_eq!(h.csr.mepc, 0x8000_0000);
    assert_eq!(h.count, 1);
}

#[test]
fn fp_add_rounding_and_flags() {
    // fadd.s f0, f1, f2 with f1 = 1.0, f2 = 2^-30 (inexact), rm = RUP
    let mut bus = FlatBus { ram: vec![0; 4096] };
    let fadd_rup = 0x0020_b053u32 | (3 << 12); // fadd.s f0,f1,f2,rup
    bus.ram[0..4].copy_from_slice(&fadd_rup.to_le_bytes());
    let mut h = Hart::new(0);
    h.pc = 0x8000_0000;
    h.csr.mstatus |= csr::MSTATUS_FS;
    h.f[1] = 0xffff_ffff_0000_0000 | 1.0f32.to_bits() as u64;
    h.f[2] = 0xffff_ffff_0000_0000 | (2.0f32).powi(-30).to_bits() as u64;
    h.run(&mut bus, 1);
    assert_eq!(h.f[0] as u32, 0x3f80_0001, "rounded up to the next float");
    assert_eq!(h.f[0] >> 32, 0xffff_ffff, "NaN-boxed");
    assert_eq!(h.csr.fflags, 1, "inexact only");
}

/// A small deterministic generator for the random-program test.
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn random_programs_never_panic_and_always_progress() {
    // Whatever the guest executes (random words, random CSR state, the MMU on with random page
    // tables), the hart must neither panic nor stop making progress.
    for seed in 1..=200u64 {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut bus = FlatBus {
            ram: vec![0; 1 << 16],
        };
        for chunk in bus.ram.chunks_mut(8) {
            chunk.copy_from_slice(&xorshift(&mut s).to_le_bytes());
        }
        let mut h = Hart::new(0);
        for r in 1..32 {
            h.x[r] = match xorshift(&mut s) % 3 {
                0 => 0x8000_0000 + (xorshift(&mut s) % (1 << 16)),
                1 => xorshift(&mut s),
                _ => xorshift(&mut s) % 64,
            };
        }
        h.pc = (0x8000_0000 + (xorshift(&mut s) % (1 << 16))) & !1;
        h.csr.mtvec = (0x8000_0000 + (xorshift(&mut s) % (1 << 16))) & !3;
        h.csr.stvec = (0x8000_0000 + (xorshift(&mut s) % (1 << 16))) & !3;
        h.csr.medeleg = xorshift(&mut s);
        h.csr.mstatus |= csr::MSTATUS_FS;
        h.csr.satp = ((8 + xorshift(&mut s) % 2) << 60) | (0x80000 + xorshift(&mut s) % 16);
        h.set_priv([Priv::User, Priv::Supervisor, Priv::Machine][(seed % 3) as usize]);
        let target = 20_000;
        let mut calls = 0;
        while h.count < target {
            let before = h.count;
            h.run(&mut bus, target - h.count);
            calls += 1;
            assert!(
                h.count > before || calls < 10 * target,
                "seed {seed}: no progress"
            );
        }
        assert_eq!(h.count, target, "seed {seed}: the budget is exact");
    }
}

#[test]
fn hardware_ad_update_keeps_the_pages_other_decoded_ops() {
    // The root page table shares RAM page 0 with code. Its entry 2 (bytes 16..24) maps the
    // gigapage at 0x8000_0000 read/write/execute, with A and D clear.
    let mut bus = FlatBus {
        ram: vec![0; 1 << 20],
    };
    for w in bus.ram[..4096].chunks_mut(4) {
        w.copy_from_slice(&0x0000_0013u32.to_le_bytes()); // nop
    }
    let pte: u64 = (0x80000 << 10) | 0xf;
    bus.ram[16..24].copy_from_slice(&pte.to_le_bytes());
    let mut h = Hart::new(0);
    h.csr.mstatus |= csr::MSTATUS_FS;
    // Decode the page's code in M-mode (no translation); the PTE's low word is a FENCE.
    let code = [0x0, 0x8, 0xc, 0x10, 0x18, 0x1c, 0x100, 0xffc];
    for off in code {
        h.pc = 0x8000_0000 + off as u64;
        h.fetch_op(&mut bus);
        assert!(h.is_decoded(off));
    }
    // A store through the gigapage in S-mode sets A and D in the entry.
    h.csr.satp = (8 << 60) | 0x80000;
    h.set_priv(Priv::Supervisor);
    assert_eq!(
        h.translate(&mut bus, 0x8000_2000, mmu::Access::Store),
        Ok(0x8000_2000)
    );
    let written = u64::from_le_bytes(bus.ram[16..24].try_into().unwrap());
    assert_eq!(written, pte | (1 << 6) | (1 << 7));
    // Exact coherence: the op decoded from those bytes is gone, every other op stays.
    assert!(!h.is_decoded(0x10), "op decoded from the PTE's bytes");
    for off in [0x0, 0x8, 0xc, 0x18, 0x1c, 0x100, 0xffc] {
        assert!(h.is_decoded(off), "op at {off:#x} was dropped");
    }
    // Executing there again decodes the new bytes.
    h.set_priv(Priv::Machine);
    h.pc = 0x8000_0010;
    let op = h.fetch_op(&mut bus);
    assert_eq!(op.insn, written as u32);
    assert_ne!(op.insn, pte as u32);
}

/// Harts share one code cache, handed to the one that runs. A hart whose store TLB mapped a
/// page before another hart made it a code page must not keep storing into it on the fast
/// path: that store would leave the other hart running the old code.
#[test]
fn a_store_by_another_hart_drops_code_it_did_not_decode() {
    for engine in [Engine::Interp, Engine::Jit] {
        let mut bus = FlatBus {
            ram: vec![0; 1 << 16],
        };
        let put = |bus: &mut FlatBus, at: usize, w: u32| {
            bus.ram[at..at + 4].copy_from_slice(&w.to_le_bytes())
        };
        // Hart B at 0x8000_0000: sw t1, 0x400(t0); sw t2, 0(t0).
        put(&mut bus, 0, 0x4062_a023);
        put(&mut bus, 4, 0x0072_a023);
        // The code at 0x8000_1000: li a0, 1; j . (a block of two).
        put(&mut bus, 0x1000, 0x0010_0513);
        put(&mut bus, 0x1004, 0x0000_006f);
        let (mut a, mut b) = (Hart::new(0), Hart::new(1));
        if !(a.set_engine(engine) && b.set_engine(engine)) {
            continue;
        }
        a.pc = 0x8000_1000;
        b.pc = 0x8000_0000;
        b.x[5] = 0x8000_1000;
        b.x[7] = 0x0020_0513; // li a0, 2
                              // B stores data into the page (its store TLB maps it now), then A runs its code.
        hand_over_code(&mut a, &mut b);
        b.run(&mut bus, 1);
        hand_over_code(&mut b, &mut a);
        a.run(&mut bus, 2);
        assert_eq!(a.x[10], 1, "{engine:?}");
        // B rewrites the first instruction; A runs the page again.
        hand_over_code(&mut a, &mut b);
        b.run(&mut bus, 1);
        assert_eq!(b.pc, 0x8000_0008);
        hand_over_code(&mut b, &mut a);
        a.pc = 0x8000_1000;
        a.run(&mut bus, 2);
        assert_eq!(a.x[10], 2, "{engine:?}: hart A ran the code B overwrote");
    }
}
