//! Fuzz the replication channel's decoding without a socket: the plaintext of frames put back
//! together into messages (header, length limit, frame bounds), each message's payload decoded,
//! the order of messages checked, and every message that decodes encoded again to the same
//! bytes. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run channel` from the repository root.
//!
//! Input: a byte whose low bit picks the peer's role, then frames as `len u16 (LE) | bytes`.
#![no_main]

use ftvm_replication::wire::{self, Body, Hello, Order, Reassembler};
use ftvm_replication::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A hello on its own, checked against this side's.
    if let Ok(h) = Hello::decode(data) {
        let ours = Hello::new(Role::Primary, 256 << 20, "disks 1");
        let _ = ours.check_compatible(&h).map_err(|e| e.to_string());
    }
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let peer = if first & 1 == 0 {
        Role::Primary
    } else {
        Role::Backup
    };
    let mut reassembler = Reassembler::default();
    let mut order = Order::Hello;
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*a, *b])) % (wire::MAX_FRAME_PLAIN + 1);
        let (frame, tail) = tail.split_at(n.min(tail.len()));
        rest = tail;
        let (head, payload) = match reassembler.push(frame) {
            Err(e) => {
                let _ = e.to_string();
                return;
            }
            Ok(None) => continue,
            Ok(Some(whole)) => whole,
        };
        assert_eq!(payload.len() as u64, u64::from(head.len));
        match order.next(peer, head.kind) {
            Ok(next) => order = next,
            Err(e) => {
                let _ = e.to_string();
            }
        }
        if let Ok(body) = wire::decode(head.kind, payload.clone()) {
            let plain = match &body {
                Body::Msg(m) => wire::message_plaintext(m, head.generation),
                Body::Hello(h) => wire::hello_plaintext(h, head.generation),
            }
            .expect("what decodes encodes");
            assert_eq!(wire::Head::parse(&plain).expect("a header"), head);
            assert_eq!(&plain[wire::HEAD..], &payload[..]);
        }
    }
});
