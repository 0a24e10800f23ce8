//! Fuzz snapshot restore: arbitrary bytes, as a file, as a payload framed with a valid
//! checksum, or as byte patches over a valid snapshot (so that the checks deep in the state are
//! reached), must be refused with an error or give a machine that saves, restores to the same
//! digest, and runs.
//! Input: a mode byte (0: file, 1: payload, else patches), then the bytes; patches are
//! (offset u16 little-endian, xor u8) triples, and mode & 4 cuts the payload at the first offset.
//! Mode & 8 frames the payload as version 2, and patches a machine whose clock changed rate.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run snapshot` from the repository root.
#![no_main]

use std::sync::OnceLock;

use ftvm_machine::{snapshot, DeviceSpec, Input, Machine, MIN_RAM};
use libfuzzer_sys::fuzz_target;

/// The payload of a snapshot of a freshly booted machine with a disk, a NIC and an RNG (with
/// `rate`, one that ran a little and changed its clock's rate: a version-2 snapshot).
fn base(rate: bool) -> &'static [u8] {
    static BASE: [OnceLock<Vec<u8>>; 2] = [OnceLock::new(), OnceLock::new()];
    BASE[rate as usize].get_or_init(|| {
        let mut kernel = vec![0u8; 4096];
        kernel[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
        kernel[56..60].copy_from_slice(b"RSC\x05");
        // A tiny kernel: an infinite loop (j .).
        kernel[0..4].copy_from_slice(&0x0000_006fu32.to_le_bytes());
        let devices = [
            DeviceSpec::Disk {
                bytes: 1 << 20,
                serial: "fuzz".into(),
            },
            DeviceSpec::Net {
                mac: [2, 0, 0, 0, 0, 1],
            },
            DeviceSpec::Rng,
        ];
        let mut m = Machine::boot_linux(MIN_RAM, 1, &kernel, None, "", &devices, 0)
            .expect("the base machine boots");
        if rate {
            m.run(1000, 1000);
            m.apply(Input::Rate { rate: 3 << 15 });
        }
        snapshot::unframe(&m.save())
            .expect("a saved snapshot unframes")
            .to_vec()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let version = if mode & 8 != 0 { 2 } else { 1 };
    let file = match mode & 3 {
        0 => rest.to_vec(),
        1 => snapshot::frame_version(version, rest),
        _ => {
            let mut p = base(version == 2).to_vec();
            let mut cut = None;
            for t in rest.chunks_exact(3) {
                let at = u16::from_le_bytes([t[0], t[1]]) as usize % p.len();
                cut.get_or_insert(at);
                p[at] ^= t[2];
            }
            if mode & 4 != 0 {
                p.truncate(cut.unwrap_or(0));
            }
            snapshot::frame_version(version, &p)
        }
    };
    let Ok(mut m) = Machine::restore(&file) else {
        return;
    };
    let again = Machine::restore(&m.save()).expect("a saved machine restores");
    assert_eq!(again.digest(), m.digest(), "save/restore keeps the state");
    // Complete whatever disk requests are in flight, then run a little.
    for slot in 0..m.devices().len() {
        for id in 0..4 {
            m.apply(Input::DiskDone {
                slot,
                id,
                ok: true,
                data: vec![0x5a; 512],
            });
        }
    }
    let stop = m.count().saturating_add(2000);
    m.run(stop, 2000);
    let _ = m.take_outputs();
});
