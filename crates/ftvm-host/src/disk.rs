//! A raw disk image served by a worker thread, in request order.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use ftvm_machine::{DiskOp, DiskRequest};
use thiserror::Error;

use crate::{EventSink, HostEvent};

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("disk image {0} is empty or not a multiple of 512 bytes")]
    Size(String),
}

/// The worker of one disk image.
pub struct Disk {
    pub bytes: u64,
    tx: Sender<DiskRequest>,
}

impl Disk {
    /// Open `path` read-write and start its worker, which reports to `events`.
    pub fn open<E: From<HostEvent> + Send + 'static>(
        path: &Path,
        slot: usize,
        events: impl EventSink<E>,
    ) -> Result<Disk, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        if bytes == 0 || !bytes.is_multiple_of(512) {
            return Err(DiskError::Size(path.display().to_string()));
        }
        let (tx, rx) = mpsc::channel::<DiskRequest>();
        std::thread::Builder::new()
            .name(format!("disk{slot}"))
            .spawn(move || {
                for req in rx {
                    let (ok, data) = serve(&file, &req.op);
                    if !ok {
                        tracing::warn!(slot, id = req.id, "disk request failed");
                    }
                    let ev = HostEvent::DiskDone {
                        slot: req.slot,
                        id: req.id,
                        ok,
                        data,
                    };
                    if !events.deliver(ev.into()) {
                        return;
                    }
                }
            })
            .map_err(|source| DiskError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Disk { bytes, tx })
    }

    pub fn submit(&self, req: DiskRequest) {
        let _ = self.tx.send(req);
    }
}

fn serve(file: &File, op: &DiskOp) -> (bool, Vec<u8>) {
    match op {
        DiskOp::Read { sector, len } => {
            let mut buf = vec![0u8; *len];
            match file.read_exact_at(&mut buf, sector * 512) {
                Ok(()) => (true, buf),
                Err(_) => (false, Vec::new()),
            }
        }
        DiskOp::Write { sector, data } => {
            (file.write_all_at(data, sector * 512).is_ok(), Vec::new())
        }
        // A flush returns only once the data is on the host's disk.
        DiskOp::Flush => (file.sync_data().is_ok(), Vec::new()),
    }
}
