//! Micro-benchmarks of the hart's hot paths: decode, execute, TLB-hitting loads and stores.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftvm_cpu::{Bus, Hart};
use std::hint::black_box;

struct Flat(Vec<u8>);

impl Bus for Flat {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.0
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
    fn time(&mut self, c: u64) -> u64 {
        c
    }
}

/// A machine whose RAM starts with `words` and then loops back to the start.
fn machine(words: &[u32]) -> (Hart, Flat) {
    let mut ram = vec![0u8; 1 << 20];
    let mut code: Vec<u32> = words.to_vec();
    // j back to the start
    let back = -(4 * code.len() as i32);
    let imm = back as u32;
    let j = ((imm >> 20) & 1) << 31
        | ((imm >> 1) & 0x3ff) << 21
        | ((imm >> 11) & 1) << 20
        | ((imm >> 12) & 0xff) << 12
        | 0x6f;
    code.push(j);
    for (i, w) in code.iter().enumerate() {
        ram[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let mut h = Hart::new(0);
    h.set_pc(0x8000_0000);
    (h, Flat(ram))
}

fn benches(c: &mut Criterion) {
    let words: Vec<u32> = vec![
        0x00b50533, 0x40b50533, 0x0015051b, 0x00151513, 0x02b50533, 0xfe051ae3, 0x00c50533, 0x4501,
        0x852e, 0x0505, 0x8082, 0xe406,
    ];
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(words.len() as u64));
    g.bench_function("mixed", |b| {
        b.iter(|| {
            for &w in &words {
                black_box(ftvm_cpu::bench_decode(black_box(w)));
            }
        })
    });
    g.finish();

    const STEPS: u64 = 100_000;
    let mut g = c.benchmark_group("execute");
    g.throughput(Throughput::Elements(STEPS));
    // addi/add/xor/slli: register-only work.
    let (mut h, mut bus) = machine(&[0x00150513, 0x00b50533, 0x00b54533, 0x00151593]);
    g.bench_function("alu", |b| b.iter(|| h.run(&mut bus, STEPS)));
    // a1 = 0x8001_0000, then two loads and two stores there: accesses that hit the TLBs.
    let (mut h, mut bus) = machine(&[
        0x800105b7, 0x02059593, 0x0205d593, 0x0005b603, 0x00c5b423, 0x0105b683, 0x00d5bc23,
    ]);
    g.bench_function("load_store", |b| b.iter(|| h.run(&mut bus, STEPS)));
    g.finish();
}

criterion_group!(hart, benches);
criterion_main!(hart);
