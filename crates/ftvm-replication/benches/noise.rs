//! The replication channel's cipher: sealing and opening one frame of each typical size (an
//! acknowledgement, a log message with a request, a full Ethernet frame, a RAM page, a
//! channel frame's largest payload), as the channel does, through the `snow` crate's
//! stateless transport with the channel's Noise parameters.
//! `cargo bench -p ftvm-replication --bench noise`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftvm_replication::channel::NOISE_PARAMS;
use snow::StatelessTransportState;

/// Both ends of a session, keyed by an in-memory handshake.
fn session() -> (StatelessTransportState, StatelessTransportState) {
    let psk = [7u8; 32];
    let b = || {
        snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .psk(0, &psk)
            .unwrap()
    };
    let mut i = b().build_initiator().unwrap();
    let mut r = b().build_responder().unwrap();
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    (
        i.into_stateless_transport_mode().unwrap(),
        r.into_stateless_transport_mode().unwrap(),
    )
}

fn benches(c: &mut Criterion) {
    let (tx, rx) = session();
    let mut g = c.benchmark_group("noise");
    for size in [16usize, 256, 1514, 4096, 65519] {
        let plain = vec![0x5au8; size];
        let mut sealed = vec![0u8; size + 16];
        let mut opened = vec![0u8; size];
        let mut nonce = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal+open {size} B"), |b| {
            b.iter(|| {
                nonce += 1;
                let n = tx.write_message(nonce, &plain, &mut sealed).unwrap();
                rx.read_message(nonce, &sealed[..n], &mut opened).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(noise, benches);
criterion_main!(noise);
