//! Dirty-page tracking on the real guest: over windows of a Linux boot, every page whose bytes
//! changed is in the tracker's bitmap, under either engine and with several harts. Pre-copy
//! (a backup attached while the guest runs) sends exactly those pages again, so a page missed
//! here would be a page the destination holds stale.

mod common;

use ftvm_cpu::Engine;
use ftvm_machine::{DeviceSpec, Input, Machine, Output, RunExit};

const MEM: u64 = 128 << 20;

fn boot(harts: usize, engine: Engine) -> Machine {
    let g = common::guest_out();
    let kernel = std::fs::read(g.join("Image")).expect("kernel image");
    let initrd = std::fs::read(g.join("initramfs.cpio.gz")).expect("initramfs");
    let mut m = Machine::boot_linux(
        MEM,
        harts,
        &kernel,
        Some(&initrd),
        "console=ttyS0 quiet",
        // The entropy device writes guest RAM by DMA.
        &[DeviceSpec::Rng],
        1_700_000_000_000_000_000,
    )
    .expect("boot");
    assert!(m.set_engine(engine) || engine == Engine::Interp);
    m
}

/// Run to `until`, answering what a host answers: idle time passes at once, entropy is given.
fn run_to(m: &mut Machine, until: u64) {
    let mut seed = 1u64;
    while m.count() < until {
        match m.run(until, 1_000_000) {
            RunExit::Idle { ticks } => m.apply(Input::Time {
                ticks: ticks.unwrap_or(10_000),
            }),
            RunExit::Power(p) => panic!("the guest stopped: {p:?}"),
            _ => {}
        }
        for out in m.take_outputs() {
            assert!(
                matches!(out, Output::Console(_)),
                "no device but the console sends"
            );
        }
        if let Some((slot, n)) = m.entropy_wanted() {
            let bytes = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            m.apply(Input::Entropy { slot, bytes });
        }
    }
}

fn check_windows(harts: usize, engine: Engine) {
    let mut m = boot(harts, engine);
    let pages = (MEM / 4096) as usize;
    let mut total_dirty = 0;
    // Windows over the kernel's start, its init and the guest's user space.
    for (from, to) in [
        (20_000_000, 30_000_000),
        (60_000_000, 61_000_000),
        (100_000_000, 140_000_000),
        (200_000_000, 260_000_000),
    ] {
        run_to(&mut m, from);
        m.take_dirty();
        let before = m.ram().to_vec();
        run_to(&mut m, to);
        let dirty = m.take_dirty();
        assert_eq!(dirty.pages(), pages);
        let mut changed = 0;
        for (page, (a, b)) in before.chunks(4096).zip(m.ram().chunks(4096)).enumerate() {
            if a != b {
                changed += 1;
                assert!(
                    dirty.is_dirty(page),
                    "{engine:?}, {harts} harts: page {page:#x} changed between {from} and {to} but is not marked dirty"
                );
            }
        }
        assert!(
            changed > 0,
            "the guest wrote nothing between {from} and {to}"
        );
        // Marked pages were stored to (possibly with the bytes they held): far from all RAM.
        assert!(
            dirty.count() < pages / 2,
            "{} of {pages} pages marked",
            dirty.count()
        );
        total_dirty += dirty.count();
    }
    assert!(total_dirty > 0);
}

#[test]
fn every_page_written_is_marked_dirty_under_the_interpreter() {
    check_windows(1, Engine::Interp);
}

#[test]
fn every_page_written_is_marked_dirty_under_the_translator() {
    check_windows(1, Engine::Jit);
}

#[test]
fn every_page_written_is_marked_dirty_with_two_harts() {
    check_windows(2, Engine::Jit);
}
