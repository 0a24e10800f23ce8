//! Fuzz the input-log reader: arbitrary bytes (after a valid magic and version half of the
//! time) must give records or an error, never a panic, a hang or a large allocation.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run log` from the repository root.
#![no_main]

use ftvm_log::{LogReader, Next, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut with_head = MAGIC.to_vec();
    with_head.extend_from_slice(&VERSION.to_le_bytes());
    with_head.extend_from_slice(data);
    for bytes in [data, &with_head[..]] {
        let Ok(mut r) = LogReader::new(bytes) else {
            continue;
        };
        // Each record consumes at least one frame of the input: this ends.
        while let Ok(Next::Record(_)) = r.next_record() {}
    }
});
