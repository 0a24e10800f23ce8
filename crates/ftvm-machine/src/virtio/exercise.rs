//! Drive the virtio devices with arbitrary bytes: the body of the fuzz target
//! (`fuzz/fuzz_targets/virtio.rs`) and of a randomized unit test. Whatever the bytes, the device
//! code must neither panic nor loop.

use super::queue::GuestRam;
use super::{Device, DeviceOutput, VirtioMmio};
use crate::RAM_BASE;

const RAM: usize = 1 << 16;

/// Interpret `data` as: a device choice, guest RAM contents, then a list of register writes,
/// receive/disk-completion events.
pub fn exercise(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let mut dev = match choice % 3 {
        0 => VirtioMmio::blk(0, 1 << 20, "fuzz"),
        1 => VirtioMmio::new(
            0,
            Device::Net {
                mac: [2, 0, 0, 0, 0, 1],
            },
        ),
        _ => VirtioMmio::new(0, Device::Rng),
    };
    // The first bytes fill RAM from 0x1000, where the set-up queues' rings live.
    let split = rest.len().min(rest.first().map_or(0, |&n| 64 * n as usize));
    let (ram_bytes, ops) = rest.split_at(split);
    let mut mem = vec![0u8; RAM];
    mem[0x1000..0x1000 + ram_bytes.len()].copy_from_slice(ram_bytes);
    let mut out = Vec::new();
    // Most inputs start from a driver that set the device up properly (queues of 8 entries at
    // fixed places), so that the bytes mostly shape descriptors and rings.
    if choice & 0x80 == 0 {
        let mut ram = GuestRam::new(&mut mem);
        for q in 0..2u32 {
            let base = RAM_BASE as u32 + 0x1000 * (q + 1);
            for (off, v) in [
                (0x30, q),
                (0x38, 8),
                (0x80, base),
                (0x84, 0),
                (0x90, base + 0x200),
                (0x94, 0),
                (0xa0, base + 0x400),
                (0xa4, 0),
                (0x44, 1),
            ] {
                dev.write(off, v, &mut ram, &mut out);
            }
        }
        dev.write(0x70, 0xf, &mut ram, &mut out);
    }
    for op in ops.chunks(7) {
        if op.len() < 7 {
            break;
        }
        let v = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        let mut ram = GuestRam::new(&mut mem);
        match op[0] % 8 {
            0..=1 => {
                // Queue notifications.
                dev.write(0x50, op[1] as u32 % 3, &mut ram, &mut out);
            }
            2..=4 => {
                // Register writes, with queue addresses pointed into RAM most of the time.
                let off = (op[1] as u64 & 0x3f) * 4;
                let v = if matches!(off, 0x80 | 0x90 | 0xa0) && op[6] & 1 == 0 {
                    (RAM_BASE as u32).wrapping_add(v % RAM as u32)
                } else if matches!(off, 0x84 | 0x94 | 0xa4) && op[6] & 1 == 0 {
                    0
                } else {
                    v
                };
                dev.write(off, v, &mut ram, &mut out);
            }
            5 => {
                let _ = dev.read((op[1] as u64) * 4);
                dev.net_receive(&mut ram, &op[..(op[6] as usize % 7)]);
            }
            6 => {
                let id = out
                    .iter()
                    .filter_map(|o| match o {
                        DeviceOutput::Disk(r) => Some(r.id),
                        _ => None,
                    })
                    .nth(op[1] as usize % 4);
                if let Some(id) = id {
                    let data = vec![0xa5; v as usize % 4096];
                    dev.disk_done(&mut ram, id, op[6] & 1 == 0, &data);
                }
            }
            _ => {
                let n = dev.rng_wanted(&mut ram);
                dev.rng_fill(&mut ram, &vec![7; n.min(op[1] as usize)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_inputs_never_panic() {
        let mut s: u64 = 0x1234_5678_9abc_def1;
        for round in 0..3000 {
            let len = 64 + (round * 37) % 9000;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    // Mostly small numbers: valid-looking indices, lengths and flags.
                    if s.is_multiple_of(3) {
                        (s >> 8) as u8 & 7
                    } else {
                        (s >> 16) as u8
                    }
                })
                .collect();
            super::exercise(&data);
        }
    }
}
