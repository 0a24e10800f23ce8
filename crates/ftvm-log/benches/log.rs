//! Micro-benchmark of log encoding: inputs appended to a log file.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftvm_log::{LogWriter, Record};
use ftvm_machine::Input;

fn benches(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ftvm-logbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = Record::Header {
        count: 0,
        snapshot: vec![0; 64],
        digest_every: 1 << 30,
    };
    let mut w = LogWriter::create(&dir.join("b.log"), header).unwrap();
    let frame = vec![0x5a; 1514];
    let mut count = 0u64;
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(1));
    g.bench_function("console_byte", |b| {
        b.iter(|| {
            count += 1000;
            w.input(count, &Input::Console(b'x')).unwrap()
        })
    });
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("frame_1514", |b| {
        b.iter(|| {
            count += 1000;
            w.input(
                count,
                &Input::Frame {
                    slot: 1,
                    frame: frame.clone(),
                },
            )
            .unwrap()
        })
    });
    g.finish();
    w.flush().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(log, benches);
criterion_main!(log);
