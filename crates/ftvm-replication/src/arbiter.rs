//! Fencing: before a side goes live (or runs on unprotected) it must win an atomic
//! test-and-set on the arbiter. A pair's life is a sequence of generations: generation 0 is
//! the pair that booted the guest, and each backup that attaches to a running primary starts
//! the next one. Each generation has its own key, won at most once and forever, so one arbiter
//! serves a guest through any number of failures and re-protections:
//!
//! - `file:PATH` creates a file exclusively on storage both sides see: PATH for generation 0,
//!   PATH.G for generation G.
//! - `etcd:http://HOST:PORT[/PREFIX]` creates the key PREFIX/G (default prefix `/ftvm`) in an
//!   etcd v3 cluster, through its JSON gateway, with a transaction that puts the key only if it
//!   was never created.
//!
//! A won key is never bound to a lease and never expires: a winner that cannot reach the
//! arbiter any more (partitioned from it, frozen, slow) still holds its generation, and no side
//! that has not raced yet can win it after a timeout. So the arbiter needs no clocks at all;
//! the keys of a retired guest are removed by its operator (`rm PATH PATH.*`, or
//! `etcdctl del --prefix PREFIX/`).
//!
//! An arbiter that cannot be reached is never a win: the side that asked stops its guest.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use thiserror::Error;

/// How long one request to etcd may take.
const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum ArbiterError {
    #[error("unknown arbiter {0:?} (expected file:PATH or etcd:http://HOST:PORT[/PREFIX])")]
    Spec(String),
    #[error("the arbiter {0} cannot be reached: {1}")]
    Io(String, std::io::Error),
    #[error("the etcd arbiter at {0} cannot be reached: {1}")]
    Etcd(String, String),
    #[error("there is no arbiter (a migration started without --arbiter): this side cannot tell a dead peer from a cut-off one")]
    NoArbiter,
}

#[derive(Clone, Debug)]
pub enum Arbiter {
    File(PathBuf),
    Etcd(Etcd),
    /// No arbiter: a race is never won. A live migration's destination without one goes live
    /// only when the source hands it the guest; a source whose destination dies after the
    /// guest was handed to it stops.
    None,
}

/// An etcd v3 cluster, spoken to through its HTTP/JSON gateway.
#[derive(Clone, Debug)]
pub struct Etcd {
    /// `http://host:port`
    endpoint: String,
    /// Keys are `prefix/generation`.
    prefix: String,
}

impl Arbiter {
    pub fn parse(spec: &str) -> Result<Arbiter, ArbiterError> {
        match spec.split_once(':') {
            Some(("file", p)) if !p.is_empty() => Ok(Arbiter::File(PathBuf::from(p))),
            Some(("etcd", url)) => {
                let rest = url
                    .strip_prefix("http://")
                    .ok_or_else(|| ArbiterError::Spec(spec.into()))?;
                let (host, path) = rest.split_once('/').unwrap_or((rest, "ftvm"));
                let path = path.trim_end_matches('/');
                if host.is_empty() || !host.contains(':') {
                    return Err(ArbiterError::Spec(spec.into()));
                }
                Ok(Arbiter::Etcd(Etcd {
                    endpoint: format!("http://{host}"),
                    prefix: format!("/{}", if path.is_empty() { "ftvm" } else { path }),
                }))
            }
            _ => Err(ArbiterError::Spec(spec.into())),
        }
    }

    fn file_for(p: &std::path::Path, generation: u64) -> PathBuf {
        if generation == 0 {
            p.to_path_buf()
        } else {
            let mut s = p.as_os_str().to_owned();
            s.push(format!(".{generation}"));
            PathBuf::from(s)
        }
    }

    /// Try to win `generation`. `Ok(true)`: this side won and may go live; `Ok(false)`: the
    /// other side won.
    pub fn test_and_set(&self, generation: u64, who: &str) -> Result<bool, ArbiterError> {
        match self {
            Arbiter::File(p) => {
                let p = Self::file_for(p, generation);
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                {
                    Ok(mut f) => {
                        let _ = writeln!(f, "{who}");
                        let _ = f.sync_all();
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(ArbiterError::Io(p.display().to_string(), e)),
                }
            }
            Arbiter::Etcd(e) => e.test_and_set(generation, who),
            Arbiter::None => Err(ArbiterError::NoArbiter),
        }
    }

    /// Whether `generation` was already won (by anyone).
    pub fn taken(&self, generation: u64) -> Result<bool, ArbiterError> {
        match self {
            Arbiter::File(p) => Ok(Self::file_for(p, generation).exists()),
            Arbiter::Etcd(e) => Ok(e.get(generation)?.is_some()),
            Arbiter::None => Ok(false),
        }
    }

    /// Who won `generation`, if anyone did.
    pub fn winner(&self, generation: u64) -> Result<Option<String>, ArbiterError> {
        match self {
            Arbiter::File(p) => {
                let p = Self::file_for(p, generation);
                match std::fs::read_to_string(&p) {
                    Ok(s) => Ok(Some(s.trim().to_string())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ArbiterError::Io(p.display().to_string(), e)),
                }
            }
            Arbiter::Etcd(e) => e.get(generation),
            Arbiter::None => Ok(None),
        }
    }
}

impl Etcd {
    fn key(&self, generation: u64) -> String {
        B64.encode(format!("{}/{generation}", self.prefix))
    }

    fn err(&self, e: impl std::fmt::Display) -> ArbiterError {
        ArbiterError::Etcd(self.endpoint.clone(), e.to_string())
    }

    fn call(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, ArbiterError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(ETCD_TIMEOUT))
            .build()
            .into();
        let text = agent
            .post(&format!("{}{path}", self.endpoint))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| self.err(e))?
            .body_mut()
            .read_to_string()
            .map_err(|e| self.err(e))?;
        serde_json::from_str(&text).map_err(|e| self.err(format!("bad reply {text:?}: {e}")))
    }

    fn test_and_set(&self, generation: u64, who: &str) -> Result<bool, ArbiterError> {
        let key = self.key(generation);
        // No lease: a won generation stays won (see the module's documentation).
        let txn = self.call(
            "/v3/kv/txn",
            serde_json::json!({
                "compare": [{ "target": "CREATE", "key": key, "createRevision": "0" }],
                "success": [{ "requestPut": { "key": key, "value": B64.encode(who) } }],
                "failure": [],
            }),
        )?;
        if txn.get("header").is_none() {
            return Err(self.err(format!("bad transaction reply {txn}")));
        }
        // proto3 JSON leaves out false.
        Ok(txn["succeeded"].as_bool().unwrap_or(false))
    }

    fn get(&self, generation: u64) -> Result<Option<String>, ArbiterError> {
        let r = self.call(
            "/v3/kv/range",
            serde_json::json!({ "key": self.key(generation) }),
        )?;
        if r.get("header").is_none() {
            return Err(self.err(format!("bad range reply {r}")));
        }
        Ok(r["kvs"]
            .get(0)
            .and_then(|kv| kv["value"].as_str())
            .map(|v| String::from_utf8_lossy(&B64.decode(v).unwrap_or_default()).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(Arbiter::parse("etcd").is_err());
        assert!(Arbiter::parse("etcd:https://h:1").is_err());
        assert!(Arbiter::parse("etcd:http://nohostport").is_err());
        assert!(Arbiter::parse("zk:x").is_err());
        match Arbiter::parse("etcd:http://10.0.0.9:2379").unwrap() {
            Arbiter::Etcd(e) => {
                assert_eq!(e.endpoint, "http://10.0.0.9:2379");
                assert_eq!(e.prefix, "/ftvm");
            }
            a => panic!("{a:?}"),
        }
        match Arbiter::parse("etcd:http://h:1/pairs/a/").unwrap() {
            Arbiter::Etcd(e) => assert_eq!(e.prefix, "/pairs/a"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn only_one_side_wins_each_generation() {
        let p = std::env::temp_dir().join(format!("ftvm-arb-{}", std::process::id()));
        let a = Arbiter::parse(&format!("file:{}", p.display())).unwrap();
        for g in 0..3 {
            let _ = std::fs::remove_file(Arbiter::file_for(&p, g));
        }
        for g in 0..3 {
            assert!(!a.taken(g).unwrap());
            let b = a.clone();
            let t = std::thread::spawn(move || b.test_and_set(g, "backup").unwrap());
            let mine = a.test_and_set(g, "primary").unwrap();
            let theirs = t.join().unwrap();
            assert!(mine ^ theirs, "exactly one side wins generation {g}");
            assert!(!a.test_and_set(g, "again").unwrap());
            assert!(a.taken(g).unwrap());
            let w = a.winner(g).unwrap().unwrap();
            assert_eq!(w, if mine { "primary" } else { "backup" });
        }
        assert!(!a.taken(3).unwrap());
        for g in 0..3 {
            let _ = std::fs::remove_file(Arbiter::file_for(&p, g));
        }
    }

    #[test]
    fn unreachable_etcd_is_an_error_not_a_win() {
        // Port 9 (discard) on loopback: nothing listens there.
        let a = Arbiter::parse("etcd:http://127.0.0.1:9/x").unwrap();
        assert!(a.test_and_set(0, "primary").is_err());
        assert!(a.taken(0).is_err());
    }
}
