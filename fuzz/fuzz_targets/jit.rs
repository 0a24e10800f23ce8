//! Fuzz the translator against the interpreter: arbitrary bytes as M-mode code (with a trap
//! vector inside them, a device region and registers pointing into RAM), run by both engines
//! with the same budgets; every exit, the hart's whole state, RAM and the device accesses must
//! agree after every run.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run jit` from the repository root.
#![no_main]

use ftvm_cpu::{Bus, Engine, Hart};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x8000_0000;
const RAM: usize = 64 << 10;
/// A device page just below RAM: reads give a function of address and count, writes are logged.
const DEV: u64 = BASE - 0x1000;

#[derive(Clone, PartialEq, Eq, Debug)]
struct TestBus {
    ram: Vec<u8>,
    io: Vec<(u64, u8, u64, u64)>,
}

impl Bus for TestBus {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }
    fn ram_base(&self) -> u64 {
        BASE
    }
    fn mmio_read(&mut self, paddr: u64, size: u8, count: u64) -> Option<u64> {
        (DEV..BASE).contains(&paddr).then(|| {
            self.io.push((paddr, size, 0, count));
            paddr.rotate_left(7) ^ count
        })
    }
    fn mmio_write(&mut self, paddr: u64, size: u8, val: u64, count: u64) -> bool {
        let ok = (DEV..BASE).contains(&paddr);
        if ok {
            self.io.push((paddr, size, val, count));
        }
        ok
    }
    fn time(&mut self, count: u64) -> u64 {
        count / 10
    }
}

fn state(h: &Hart) -> Vec<u8> {
    let mut v = Vec::new();
    h.save(&mut v);
    v
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 || !Engine::Jit.supported() {
        return;
    }
    let (ctl, code) = data.split_at(16);
    let mut ram = vec![0u8; RAM];
    let n = code.len().min(RAM / 2);
    ram[..n].copy_from_slice(&code[..n]);
    let bus = TestBus { ram, io: Vec::new() };
    let mut h = Hart::new(0);
    h.set_pc(BASE);
    // F/D on; traps land inside the fuzzed code.
    h.set_csr(0x300, 0x6000);
    h.set_csr(0x305, BASE + u64::from(ctl[0]) * 4);
    for r in 1..32 {
        // RAM addresses (some near its end or in the device page), small and negative values.
        let b = u64::from(ctl[r % 16]);
        let v = match (b + r as u64) % 5 {
            0 => b,
            1 => DEV + b * 8,
            2 => (b as i8 as i64 as u64).rotate_right(r as u32),
            _ => BASE + (b << 8) + r as u64 * 8,
        };
        h.set_reg(r, v);
    }
    let (mut a, mut b) = (h.clone(), h);
    assert!(a.set_engine(Engine::Interp) && b.set_engine(Engine::Jit));
    let (mut bus_a, mut bus_b) = (bus.clone(), bus);
    for (i, &c) in ctl.iter().enumerate().skip(1) {
        let budget = match c % 3 {
            0 => u64::from(c % 8) + 1,
            1 => u64::from(c) + 1,
            _ => u64::from(c) * 40 + 1,
        };
        let ea = a.run(&mut bus_a, budget);
        let eb = b.run(&mut bus_b, budget);
        assert_eq!(ea, eb, "run {i}: exits differ");
        assert_eq!(a.count(), b.count(), "run {i}: counts differ");
        assert_eq!(a.pc(), b.pc(), "run {i}: pcs differ");
        assert!(state(&a) == state(&b), "run {i}: hart states differ");
        assert!(bus_a == bus_b, "run {i}: RAM or device accesses differ");
    }
});
