//! Fencing: before a side goes live (or runs on unprotected) it must win an atomic
//! test-and-set. `file:PATH` creates PATH exclusively on storage both sides see; whoever
//! creates it wins, forever: a new pair needs a new (or removed) path.

use std::io::Write;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArbiterError {
    #[error("unknown arbiter {0:?} (expected file:PATH)")]
    Spec(String),
    #[error("the arbiter {0} cannot be reached: {1}")]
    Io(String, std::io::Error),
}

#[derive(Clone, Debug)]
pub enum Arbiter {
    File(PathBuf),
}

impl Arbiter {
    pub fn parse(spec: &str) -> Result<Arbiter, ArbiterError> {
        match spec.split_once(':') {
            Some(("file", p)) if !p.is_empty() => Ok(Arbiter::File(PathBuf::from(p))),
            _ => Err(ArbiterError::Spec(spec.into())),
        }
    }

    /// Try to win. `Ok(true)`: this side won and may go live; `Ok(false)`: the other side won.
    pub fn test_and_set(&self, who: &str) -> Result<bool, ArbiterError> {
        match self {
            Arbiter::File(p) => {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
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
        }
    }

    /// Whether the arbiter was already won (by anyone).
    pub fn taken(&self) -> bool {
        match self {
            Arbiter::File(p) => p.exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_side_wins() {
        let p = std::env::temp_dir().join(format!("ftvm-arb-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let a = Arbiter::parse(&format!("file:{}", p.display())).unwrap();
        let b = a.clone();
        let t = std::thread::spawn(move || b.test_and_set("backup").unwrap());
        let mine = a.test_and_set("primary").unwrap();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one side wins");
        assert!(!a.test_and_set("again").unwrap());
        assert!(Arbiter::parse("etcd").is_err());
        let _ = std::fs::remove_file(&p);
    }
}
