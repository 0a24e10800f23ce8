//! Fuzz the bare-metal ELF loader: arbitrary bytes must be refused with an error or load into
//! a 16 MiB machine that then runs.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run elf` from the repository root.
#![no_main]

use ftvm_machine::{Machine, MIN_RAM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut m) = Machine::boot_elf(MIN_RAM, 1, data) {
        m.run(1000, 1000);
    }
});
