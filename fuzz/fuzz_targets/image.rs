//! Fuzz the Linux Image loader (with an initrd and the device tree): arbitrary bytes must be
//! refused with an error or load into a 16 MiB machine that then runs.
//! Input: a selector byte (bit 6: with an initrd of (bits 0-5) x 256 KiB), then the kernel.
//! With bit 7 set the Image magic is patched in, so that the header fields are exercised.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run image` from the repository root.
#![no_main]

use ftvm_machine::{DeviceSpec, Machine, MIN_RAM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, kernel)) = data.split_first() else {
        return;
    };
    let mut kernel = kernel.to_vec();
    if sel & 0x80 != 0 && kernel.len() >= 64 {
        kernel[56..60].copy_from_slice(b"RSC\x05");
    }
    let initrd = vec![0x42u8; (sel & 0x3f) as usize * 1024 * 256];
    let initrd = (sel & 0x40 != 0).then_some(&initrd[..]);
    let devices = [DeviceSpec::Rng];
    if let Ok(mut m) = Machine::boot_linux(MIN_RAM, 1, &kernel, initrd, "console=ttyS0", &devices, 0) {
        m.run(1000, 1000);
    }
});
