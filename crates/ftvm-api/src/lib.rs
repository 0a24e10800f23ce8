//! The management plane of a running ftvm, beside the guest and never on its path:
//!
//! - an HTTP/JSON API on a Unix socket (`--api-socket PATH`), as Firecracker and Cloud
//!   Hypervisor serve theirs: machine info and state, pause and resume, snapshot, replication
//!   (role, lag, protection), migration, fault injection, quit (docs/api.md, docs/openapi.yaml);
//! - Prometheus metrics and a live status page on a TCP address (`--metrics ADDR`);
//! - the client that `ftvm ctl` and `ftvm status` use ([`client`]).
//!
//! What it shows comes from the member's [`Telemetry`] (atomics the live loop updates); what it
//! asks goes to the live loop as an `Event::Control`, carried out between two steps of the
//! machine. So nothing here can change what the guest computes, and a slow or stuck client
//! never holds the guest up: the server runs on its own thread.

pub mod client;
mod metrics;
mod server;

use std::path::PathBuf;
use std::sync::Arc;

use ftvm_replication::migrate;
use ftvm_runner::telemetry::Telemetry;
use thiserror::Error;

pub use metrics::render as render_metrics;
pub use server::Server;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot serve the API on {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the API's thread: {0}")]
    Thread(std::io::Error),
}

/// What a member is, for `GET /machine`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Info {
    pub version: &'static str,
    /// run, record, primary or backup.
    pub command: String,
    pub harts: u64,
    pub mem_bytes: u64,
    pub engine: String,
    pub clock: String,
    /// The virtio devices: `disks=N nets=MAC,... rng`, or `bare-metal`.
    pub devices: String,
    /// How the host reaches the guest's ports (user-mode networking), e.g.
    /// `tcp:127.0.0.1:40000-:6379`.
    pub forwards: Vec<String>,
    pub pid: u32,
}

/// The member the API serves.
pub struct Member {
    pub info: Info,
    pub telemetry: Arc<Telemetry>,
    /// A migration control socket (`ftvm run --control`): `POST /migrate` goes through it.
    pub migration: Option<(PathBuf, Arc<migrate::Control>)>,
    /// Other members' metrics addresses, shown beside this one on the status page.
    pub peers: Vec<String>,
}
