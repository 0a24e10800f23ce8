//! The servers: the API on a Unix socket, metrics and the status page on TCP, both on one
//! thread of their own (a current-thread tokio runtime), with a sampler that takes the
//! member's history once a second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ftvm_replication::migrate;
use ftvm_runner::telemetry::{Command, Refusal, Request, Role, Sample};
use ftvm_runner::vote::Injection;
use ftvm_runner::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{ApiError, Member};

/// How long a request waits for the live loop to carry it out.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long the status page waits for a peer's history.
const PEER_WITHIN: Duration = Duration::from_millis(800);

struct State {
    m: Member,
    /// Instructions per second over the last sample (an f64's bits).
    rate: AtomicU64,
    /// This member's name on the status page: its metrics address.
    name: String,
}

type Shared = Arc<State>;

/// The running servers; dropping it stops them and removes the API socket.
pub struct Server {
    socket: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serve the API on `api_socket` and the metrics and status page on `metrics` (host:port;
    /// port 0 picks a free one, see [`Server::metrics_addr`]). The listeners are open when
    /// this returns.
    pub fn start(
        api_socket: Option<&Path>,
        metrics: Option<&str>,
        member: Member,
    ) -> Result<Server, ApiError> {
        let api = api_socket.map(bind_unix).transpose()?;
        let tcp = metrics
            .map(|addr| {
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| ApiError::Metrics {
                        addr: addr.to_string(),
                        source,
                    })
            })
            .transpose()?;
        let metrics_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let state = Arc::new(State {
            name: metrics_addr.map_or_else(|| "this member".into(), |a| a.to_string()),
            m: member,
            rate: AtomicU64::new(0f64.to_bits()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ftvm-api".into())
            .spawn(move || serve(state, api, tcp, stopped))
            .map_err(ApiError::Thread)?;
        Ok(Server {
            socket: api_socket.map(Path::to_path_buf),
            metrics_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the metrics and the status page are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bind the API's socket; a stale socket file (nobody listening) is replaced, a live one is
/// an error.
fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ApiError> {
    let err = |source| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process serves it",
        )));
    }
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    // Only this user may drive the machine (as with Firecracker's socket).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

fn serve(
    state: Shared,
    api: Option<std::os::unix::net::UnixListener>,
    tcp: Option<std::net::TcpListener>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the API cannot start its runtime");
            return;
        }
    };
    rt.block_on(async move {
        tokio::spawn(sampler(state.clone()));
        if let Some(l) = api.and_then(|l| tokio::net::UnixListener::from_std(l).ok()) {
            let app = api_routes(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::warn!(error = %e, "the API server stopped");
                }
            });
        }
        if let Some(l) = tcp.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) {
            let app = page_routes(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::warn!(error = %e, "the metrics server stopped");
                }
            });
        }
        let _ = stopped.await;
    });
}

/// Once a second: the rate, and a sample into the history.
async fn sampler(s: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), s.m.telemetry.instructions());
    loop {
        tick.tick().await;
        let now = (Instant::now(), s.m.telemetry.instructions());
        let dt = now.0.duration_since(last.0).as_secs_f64();
        if dt > 0.0 {
            let rate = now.1.saturating_sub(last.1) as f64 / dt;
            s.rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        last = now;
        s.m.telemetry.sample();
    }
}

fn api_routes(s: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/machine", get(machine))
        .route("/state", get(state))
        .route("/replication", get(replication))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/quit", post(quit))
        .route("/snapshot", post(snapshot))
        .route("/fault", post(fault))
        .route("/backup/drop", post(drop_backup))
        .route("/backup/accept", post(accept_backups))
        .route("/backup/refuse", post(refuse_backups))
        .route(
            "/migrate",
            get(migrate_status)
                .post(migrate_start)
                .delete(migrate_cancel),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(s)
}

fn page_routes(s: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/history", get(history))
        .route("/members", get(members))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(s)
}

/// An error as JSON: `{"error": message}` with its status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint (GET / lists them)")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method (GET / lists them)",
    )
}

/// A JSON body, or the error the client gets for it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Box<Response>> {
    b.map(|Json(v)| v).map_err(|r| {
        Box::new(error(
            r.status(),
            format!("bad request body: {}", r.body_text()),
        ))
    })
}

async fn index() -> Json<Value> {
    Json(json!({
        "endpoints": [
            "GET /machine", "GET /state", "GET /replication", "GET /metrics",
            "POST /pause", "POST /resume", "POST /quit",
            "POST /backup/drop", "POST /backup/accept", "POST /backup/refuse",
            "POST /snapshot {\"path\": ABSOLUTE_PATH}",
            "POST /fault {\"fault\": SPEC, \"at\"?: COUNT, \"after\"?: INSTRUCTIONS}",
            "GET /migrate", "POST /migrate {\"to\": ADDR, \"psk\": FILE, ...}", "DELETE /migrate",
        ],
        "docs": "docs/api.md, docs/openapi.yaml",
    }))
}

async fn machine(AxState(s): AxState<Shared>) -> Json<Value> {
    let mut v = serde_json::to_value(&s.m.info).unwrap_or_default();
    v["uptime_seconds"] = json!(s.m.telemetry.uptime().as_secs_f64());
    Json(v)
}

fn state_name(s: &State) -> &'static str {
    let t = &s.m.telemetry;
    match t.role() {
        Role::Starting => "starting",
        Role::Backup => "following",
        Role::Stopped => "stopped",
        Role::Live | Role::Primary if t.paused() => "paused",
        Role::Live | Role::Primary => "running",
    }
}

async fn state(AxState(s): AxState<Shared>) -> Json<Value> {
    let t = &s.m.telemetry;
    Json(json!({
        "state": state_name(&s),
        "role": t.role().name(),
        "instructions": t.instructions(),
        "instructions_per_second": f64::from_bits(s.rate.load(Ordering::Relaxed)).round(),
    }))
}

async fn replication(AxState(s): AxState<Shared>) -> Json<Value> {
    let t = &s.m.telemetry;
    let lag = t.lag();
    let (attaches, paused) = t.attach_pauses();
    Json(json!({
        "role": t.role().name(),
        "protected": t.peer().is_some(),
        "instructions": t.instructions(),
        "peer_instructions": t.peer(),
        "lag_instructions": lag,
        "lag_ms": lag.map(|l| l as f64 / ftvm_machine::board::INSTRUCTIONS_PER_MS as f64),
        "generation": t.generation.load(Ordering::Relaxed),
        "failovers": t.failovers.load(Ordering::Relaxed),
        "attaches": attaches,
        "attach_pause_seconds": paused,
        "vote_mismatches": t.vote_mismatches.load(Ordering::Relaxed),
        "accepting_backups": t.accepting(),
    }))
}

/// Ask the live loop to carry out `command`, and answer with what it said.
async fn ask(s: &State, command: Command) -> Response {
    let t = &s.m.telemetry;
    let not_now = match t.role() {
        Role::Starting => {
            Some("the guest has not started yet (a primary waits for its first backup)")
        }
        Role::Backup => Some("this member is a backup following its primary: ask the live member"),
        Role::Stopped => Some("the guest has stopped"),
        Role::Live | Role::Primary => None,
    };
    if let Some(why) = not_now {
        return error(StatusCode::CONFLICT, why);
    }
    let Some(tx) = t.control() else {
        return error(
            StatusCode::CONFLICT,
            "the request was not carried out: the guest is not running here now",
        );
    };
    let (reply, answer) = mpsc::channel();
    if tx.send(Event::Control(Request { command, reply })).is_err() {
        return error(StatusCode::CONFLICT, "the guest's run loop has ended");
    }
    let got = tokio::task::spawn_blocking(move || answer.recv_timeout(ANSWER_WITHIN)).await;
    match got {
        Ok(Ok(Ok(message))) => Json(json!({
            "message": message,
            "state": state_name(s),
        }))
        .into_response(),
        Ok(Ok(Err(Refusal::Conflict(m)))) => error(StatusCode::CONFLICT, m),
        Ok(Ok(Err(Refusal::Failed(m)))) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        Ok(Err(mpsc::RecvTimeoutError::Timeout)) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the guest's run loop did not answer within 10 s",
        ),
        Ok(Err(mpsc::RecvTimeoutError::Disconnected)) | Err(_) => error(
            StatusCode::CONFLICT,
            "the request was not carried out: the guest is not running here now",
        ),
    }
}

async fn pause(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::Pause).await
}

async fn resume(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::Resume).await
}

async fn quit(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::Quit).await
}

async fn drop_backup(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::DropBackup).await
}

async fn accept_backups(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::AcceptBackups(true)).await
}

async fn refuse_backups(AxState(s): AxState<Shared>) -> Response {
    ask(&s, Command::AcceptBackups(false)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    path: String,
}

async fn snapshot(
    AxState(s): AxState<Shared>,
    b: Result<Json<SnapshotBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let path = PathBuf::from(&b.path);
    if !path.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "\"path\" must be absolute (the server's directory is not the client's): {:?}",
                b.path
            ),
        );
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the directory of {:?} does not exist", b.path),
        );
    }
    if path.is_dir() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is a directory", b.path),
        );
    }
    ask(&s, Command::Snapshot(path)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    /// As `--inject` takes it before its `@`: x10:3, csr:mepc:5, ram:0x80200000:7, tlb:12:40.
    fault: String,
    /// At this instruction count (at once if it has passed).
    at: Option<u64>,
    /// This many instructions from now.
    after: Option<u64>,
}

async fn fault(AxState(s): AxState<Shared>, b: Result<Json<FaultBody>, JsonRejection>) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.fault.contains('@') {
        return error(
            StatusCode::BAD_REQUEST,
            "\"fault\" is the spec alone (x10:3); say when with \"at\" or \"after\"",
        );
    }
    let when = match (b.at, b.after) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give \"at\" or \"after\", not both",
            )
        }
        (Some(at), None) => at.to_string(),
        (None, after) => format!("+{}", after.unwrap_or(0)),
    };
    match format!("{}@{when}", b.fault).parse::<Injection>() {
        Ok(i) => ask(&s, Command::Inject(i)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// A request to the migration control socket: its events, or why it failed.
async fn via_control(s: &State, request: Value) -> Response {
    let Some((sock, _)) = &s.m.migration else {
        return error(
            StatusCode::CONFLICT,
            "this member has no migration control (start it with `ftvm run --control SOCK`)",
        );
    };
    let sock = sock.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let r = migrate::request(&sock, request, |v| events.push(v.clone()));
        (r, events)
    })
    .await;
    match got {
        Ok((Ok(done), events)) => Json(json!({ "done": done, "events": events })).into_response(),
        Ok((Err(e), _)) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn migrate_status(AxState(s): AxState<Shared>) -> Response {
    via_control(&s, json!({"cmd": "status"})).await
}

async fn migrate_cancel(AxState(s): AxState<Shared>) -> Response {
    via_control(&s, json!({"cmd": "cancel"})).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    to: String,
    /// The key file, as the source reads it (absolute).
    psk: String,
    mode: Option<String>,
    max_downtime_ms: Option<u64>,
    max_bandwidth_mib: Option<u64>,
    lockstep_ms: Option<u64>,
    arbiter: Option<String>,
}

async fn migrate_start(
    AxState(s): AxState<Shared>,
    b: Result<Json<MigrateBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mode = b.mode.unwrap_or_else(|| "precopy".into());
    if migrate::Mode::parse(&mode).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("\"mode\" is precopy, handover or postcopy, not {mode:?}"),
        );
    }
    if !Path::new(&b.psk).is_absolute() {
        return error(StatusCode::BAD_REQUEST, "\"psk\" must be an absolute path");
    }
    let mut r = json!({
        "cmd": "migrate",
        "to": b.to,
        "psk": b.psk,
        "mode": mode,
        "max_downtime_ms": b.max_downtime_ms.unwrap_or(300),
        "max_bandwidth_mib": b.max_bandwidth_mib.unwrap_or(0),
        "lockstep_ms": b.lockstep_ms.unwrap_or(0),
    });
    if let Some(a) = b.arbiter {
        r["arbiter"] = a.into();
    }
    via_control(&s, r).await
}

async fn metrics(AxState(s): AxState<Shared>) -> Response {
    let migrating =
        s.m.migration
            .as_ref()
            .is_some_and(|(_, c)| c.request().is_some());
    let text = crate::metrics::render(
        &s.m.telemetry,
        f64::from_bits(s.rate.load(Ordering::Relaxed)),
        migrating,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn sample_json(x: &Sample) -> Value {
    json!({
        "t": x.unix_ms,
        "role": x.role.name(),
        "instructions": x.instructions,
        "protected": x.protected,
        "lag_instructions": x.lag_instructions,
        "lag_ms": x.lag_ms,
        "held": x.held,
        "hold_max_ms": x.hold_max_ms,
    })
}

/// This member's history.
fn own_history(s: &State) -> Value {
    let t = &s.m.telemetry;
    json!({
        "name": s.name,
        "command": s.m.info.command,
        "role": t.role().name(),
        "state": state_name(s),
        "protected": t.peer().is_some(),
        "samples": t.history().iter().map(sample_json).collect::<Vec<_>>(),
    })
}

async fn history(AxState(s): AxState<Shared>) -> Json<Value> {
    Json(own_history(&s))
}

/// This member's history and its peers' (fetched from their metrics addresses).
async fn members(AxState(s): AxState<Shared>) -> Json<Value> {
    let mut all = vec![own_history(&s)];
    for peer in s.m.peers.clone() {
        let got = tokio::task::spawn_blocking(move || fetch_peer(&peer)).await;
        all.push(got.unwrap_or_else(|e| json!({ "error": e.to_string() })));
    }
    Json(json!({ "members": all }))
}

fn fetch_peer(peer: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PEER_WITHIN))
        .build()
        .into();
    let got = agent
        .get(&format!("http://{peer}/history"))
        .call()
        .map_err(|e| e.to_string())
        .and_then(|mut r| {
            r.body_mut()
                .with_config()
                .limit(4 << 20)
                .read_to_string()
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        });
    match got {
        Ok(v) if v.is_object() => v,
        Ok(_) => json!({ "name": peer, "error": "not a member's history" }),
        Err(e) => json!({ "name": peer, "error": format!("unreachable: {e}") }),
    }
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}
