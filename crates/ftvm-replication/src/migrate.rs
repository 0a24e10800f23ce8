//! Live migration: a running guest moves to an ftvm waiting on another host, over the pair's
//! authenticated channel and with the pair's machinery (see docs/migration.md).
//!
//! - The source (`ftvm run --control SOCK`) serves a control socket; `ftvm migrate` asks it
//!   to move the guest ([`request`]). The source connects to the destination as a primary
//!   connects to a backup, and attaches it by pre-copy while the guest runs
//!   ([`crate::primary::Protector`]).
//! - The destination (`ftvm run --incoming ADDR`) is a backup ([`incoming`]): it receives the
//!   state and follows the log, and goes live when the source hands the guest over
//!   (`Msg::HandOver`), at an instruction boundary, with output commit intact.
//! - Modes: `precopy` hands over as soon as the destination holds the state (the guest runs
//!   on the source during the rounds, and pauses for the last of them); `handover` lets the
//!   destination follow in lockstep first, and hands over once its replay has caught up: the
//!   guest pauses about one round trip.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftvm_runner::Event;
use serde_json::{json, Value};

use crate::channel::{Channel, Hello, Psk};
use crate::transport::{self, Halves};
use crate::{Arbiter, PairError};

/// When the source hands the guest over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As soon as the destination holds the state (iterative pre-copy, then stop-and-copy of
    /// the rest).
    Precopy,
    /// Once the destination, attached as a backup by pre-copy, has followed the guest in
    /// lockstep and its replay caught up: the guest pauses about one round trip.
    HandOver,
    /// At once, before RAM was sent (the disks were): the destination runs and fetches each
    /// missing page when its guest first touches it, while the source pushes the rest.
    Postcopy,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "precopy" | "pre-copy" => Some(Mode::Precopy),
            "handover" | "hand-over" => Some(Mode::HandOver),
            "postcopy" | "post-copy" => Some(Mode::Postcopy),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Precopy => "precopy",
            Mode::HandOver => "handover",
            Mode::Postcopy => "postcopy",
        }
    }
}

/// A migration the operator asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub to: String,
    pub psk: PathBuf,
    pub mode: Mode,
    pub max_downtime: Duration,
    /// The most bytes per second the copy may use (None: as fast as the link goes).
    pub max_bandwidth: Option<u64>,
    /// Hand-over mode: the destination follows in lockstep at least this long before it takes
    /// over.
    pub lockstep: Duration,
    /// Without one, a destination whose source dies before the hand-over stops (the guest is
    /// lost with its source); with one, it races for the guest as a backup does.
    pub arbiter: Option<String>,
}

/// What the control socket and the source's pre-copy share: the migration under way, the
/// operator's cancel, and where progress lines go.
#[derive(Default)]
pub struct Control {
    request: Mutex<Option<Request>>,
    cancel: AtomicBool,
    report: Mutex<Option<Sender<Value>>>,
    /// The newest progress line of the migration under way.
    last: Mutex<String>,
}

impl Control {
    /// The migration under way, if any.
    pub fn request(&self) -> Option<Request> {
        self.request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the operator cancelled the migration under way.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Tell the operator (and the terminal) how the migration goes.
    pub fn progress(&self, message: &str) {
        eprintln!("\r\nftvm: {message}\r");
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = message.to_string();
        self.send(json!({"event": "progress", "message": message}));
    }

    /// The migration ended: the guest runs at the destination (`Ok`), or still here (`Err`).
    /// Only the first call for a migration counts.
    pub fn finished(&self, outcome: Result<String, String>) {
        if self
            .request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return;
        }
        let v = match &outcome {
            Ok(m) => {
                eprintln!("\r\nftvm: migration done: {m}\r");
                json!({"event": "done", "message": m})
            }
            Err(m) => {
                eprintln!("\r\nftvm: migration failed: {m}; the guest runs on here\r");
                json!({"event": "error", "message": m})
            }
        };
        self.send(v);
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.request.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.cancel.store(false, Ordering::SeqCst);
    }

    fn send(&self, v: Value) {
        if let Some(tx) = &*self.report.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(v);
        }
    }
}

/// Reports a migration that ends without saying how (the guest stopped, a thread gave up)
/// when dropped: the operator's `ftvm migrate` never waits for nothing.
pub struct Outcome(pub Arc<Control>);

impl Drop for Outcome {
    fn drop(&mut self) {
        self.0.finished(Err(
            "the migration ended before the hand-over (the guest stopped?)".into(),
        ));
    }
}

/// Serve the control socket at `path` (a Unix socket, mode 0600): each connection sends one
/// JSON request line and gets JSON event lines back. `{"cmd": "migrate", "to": ADDR, "psk":
/// FILE, "mode": "precopy"|"handover", "max_downtime_ms": N, "arbiter": SPEC}` starts a
/// migration and streams its progress until it ends; `{"cmd": "cancel"}` cancels it;
/// `{"cmd": "status"}` answers whether one is under way. The destination is connected to and
/// authenticated here; the connection goes to the source's protector through `backups`.
pub fn serve(
    path: &Path,
    control: Arc<Control>,
    hello: Hello,
    backups: Sender<Halves>,
    wake: ftvm_runner::EventTx,
) -> Result<(), PairError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(PairError::io(format!(
        "cannot open the control socket {}",
        path.display()
    )))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    crate::link::spawn("control-accept", move || {
        for conn in listener.incoming().flatten() {
            let (control, hello, backups, wake) = (
                control.clone(),
                hello.clone(),
                backups.clone(),
                wake.clone(),
            );
            crate::link::spawn("control", move || {
                if let Err(e) = handle(conn, &control, &hello, &backups, &wake) {
                    tracing::debug!(error = %e, "control connection");
                }
            });
        }
    });
    Ok(())
}

fn reply(conn: &mut UnixStream, v: Value) -> std::io::Result<()> {
    writeln!(conn, "{v}")
}

fn handle(
    mut conn: UnixStream,
    control: &Control,
    hello: &Hello,
    backups: &Sender<Halves>,
    wake: &ftvm_runner::EventTx,
) -> std::io::Result<()> {
    let mut line = String::new();
    // A request is one short line: read at most 64 KiB of it.
    BufReader::new(std::io::Read::take(&conn, 64 << 10)).read_line(&mut line)?;
    let err =
        |conn: &mut UnixStream, m: String| reply(conn, json!({"event": "error", "message": m}));
    let Ok(req) = serde_json::from_str::<Value>(&line) else {
        return err(&mut conn, "the request is not a JSON object".into());
    };
    match req.get("cmd").and_then(Value::as_str) {
        Some("status") => {
            let r = control.request();
            let last = control
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            reply(
                &mut conn,
                json!({"event": "status", "migrating": r.is_some(),
                       "to": r.as_ref().map(|r| r.to.clone()),
                       "mode": r.as_ref().map(|r| r.mode.name()),
                       "message": last}),
            )
        }
        Some("cancel") => {
            if control.request().is_none() {
                return err(&mut conn, "no migration is under way".into());
            }
            control.cancel.store(true, Ordering::SeqCst);
            let _ = wake.send(Event::Wake);
            reply(
                &mut conn,
                json!({"event": "cancelling", "message": "the migration is being cancelled"}),
            )
        }
        Some("migrate") => {
            let req = match parse_request(&req) {
                Ok(r) => r,
                Err(m) => return err(&mut conn, m),
            };
            {
                let mut cur = control.request.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(r) = &*cur {
                    let m = format!("a migration to {} is already under way", r.to);
                    drop(cur);
                    return err(&mut conn, m);
                }
                *cur = Some(req.clone());
            }
            let (tx, rx) = mpsc::channel();
            *control.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            match connect(&req, hello) {
                Ok(halves) => {
                    control.progress(&format!(
                        "migration to {} ({}) connected and authenticated",
                        req.to,
                        req.mode.name()
                    ));
                    if backups.send(halves).is_err() {
                        control.finished(Err("the source is not running".into()));
                    }
                    let _ = wake.send(Event::Wake);
                }
                Err(e) => control.finished(Err(format!("cannot migrate to {}: {e}", req.to))),
            }
            // Stream the events until the migration ends (the sender is dropped then).
            for v in rx {
                let end = v["event"] != "progress";
                if reply(&mut conn, v).is_err() {
                    // The client left; the migration goes on.
                    return Ok(());
                }
                if end {
                    break;
                }
            }
            Ok(())
        }
        _ => err(
            &mut conn,
            "unknown command (expected migrate, cancel or status)".into(),
        ),
    }
}

fn parse_request(v: &Value) -> Result<Request, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let to = s("to").ok_or("a migration needs `to`, the destination's address")?;
    let psk = s("psk").ok_or("a migration needs `psk`, the key file both sides use")?;
    let mode = match s("mode") {
        None => Mode::Precopy,
        Some(m) => Mode::parse(&m).ok_or(format!(
            "unknown migration mode {m:?} (expected precopy, handover or postcopy)"
        ))?,
    };
    let max_downtime = Duration::from_millis(
        v.get("max_downtime_ms")
            .map(|x| x.as_u64().ok_or("max_downtime_ms must be a whole number"))
            .transpose()?
            .unwrap_or(300),
    );
    let num = |k: &str| -> Result<Option<u64>, String> {
        v.get(k)
            .map(|x| x.as_u64().ok_or(format!("{k} must be a whole number")))
            .transpose()
    };
    let max_bandwidth = num("max_bandwidth_mib")?
        .filter(|&b| b > 0)
        .map(|b| b.saturating_mul(1 << 20));
    let lockstep = Duration::from_millis(num("lockstep_ms")?.unwrap_or(0));
    let arbiter = s("arbiter");
    if let Some(a) = &arbiter {
        Arbiter::parse(a).map_err(|e| e.to_string())?;
    }
    Ok(Request {
        to,
        psk: PathBuf::from(psk),
        mode,
        max_downtime,
        max_bandwidth,
        lockstep,
        arbiter,
    })
}

/// Connect to the destination and authenticate as the primary of the link.
fn connect(req: &Request, hello: &Hello) -> Result<Halves, PairError> {
    let psk = Psk::from_file(&req.psk)?;
    let addr = req.to.as_str();
    let stream = TcpStream::connect(addr).map_err(PairError::io("cannot connect"))?;
    let (out, inc, theirs) = Channel::handshake(stream, &psk, hello)?;
    hello
        .check_compatible(&theirs)
        .inspect_err(|_| out.shutdown())?;
    Ok(transport::boxed((out, inc)))
}

/// The destination: accept the source's connection on `listen` (authenticated, the same
/// protocol and machine; others are refused and waited past) and return it.
pub fn incoming(listen: &str, psk: &Psk, hello: &Hello) -> Result<Halves, PairError> {
    let listener =
        TcpListener::bind(listen).map_err(PairError::io(format!("cannot listen on {listen}")))?;
    eprintln!("ftvm: waiting for an incoming migration on {listen}");
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let peer = s.peer_addr().map_or("?".to_string(), |a| a.to_string());
        match Channel::handshake(s, psk, hello).and_then(|(out, inc, theirs)| {
            hello
                .check_compatible(&theirs)
                .inspect_err(|_| out.shutdown())?;
            Ok((out, inc))
        }) {
            Ok(halves) => {
                eprintln!("ftvm: migration source {peer} connected");
                return Ok(transport::boxed(halves));
            }
            Err(e) => eprintln!("ftvm: refused {peer}: {e}"),
        }
    }
    Err(PairError::Protocol("the listener stopped".into()))
}

/// `ftvm migrate`: send `request` to the control socket at `path` and print its events until
/// the migration ends. Ok(true) when the guest moved.
pub fn request(path: &Path, request: Value, mut print: impl FnMut(&Value)) -> Result<bool, String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach the control socket {}: {e}", path.display()))?;
    writeln!(conn, "{request}").map_err(|e| format!("writing the request: {e}"))?;
    let mut moved = false;
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|_| format!("not an event: {line:?}"))?;
        print(&v);
        match v["event"].as_str() {
            Some("done") => moved = true,
            Some("error") => return Err(v["message"].as_str().unwrap_or("failed").to_string()),
            _ => {}
        }
    }
    Ok(moved)
}
