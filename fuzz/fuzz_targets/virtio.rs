//! Fuzz the virtio transport, virtqueue walking and device request parsing.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run virtio` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvm_machine::virtio::exercise::exercise(data);
});
