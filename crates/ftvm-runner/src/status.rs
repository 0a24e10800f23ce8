//! A member's status file: its role, count, protection and lag, rewritten (atomically) at most
//! every 100 ms, read by `ftvm status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftvm_machine::board::INSTRUCTIONS_PER_MS;

pub struct StatusFile {
    path: PathBuf,
    last: Option<Instant>,
}

impl StatusFile {
    pub fn new(path: &Path) -> StatusFile {
        StatusFile {
            path: path.to_path_buf(),
            last: None,
        }
    }

    /// `peer`: the count the other side is at (the backup's acknowledged log for a primary,
    /// the primary's latest record for a backup); None when unprotected.
    pub fn update(&mut self, role: &str, count: u64, peer: Option<u64>) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, render(role, count, peer)).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

fn render(role: &str, count: u64, peer: Option<u64>) -> String {
    let lag = peer.map(|p| count.abs_diff(p));
    format!(
        "role={role}\ninstructions={count}\nprotected={}\nlag_instructions={}\nlag_ms={}\n",
        if peer.is_some() { "yes" } else { "no" },
        lag.map_or("-".into(), |l| l.to_string()),
        lag.map_or("-".into(), |l| {
            format!("{:.1}", l as f64 / INSTRUCTIONS_PER_MS as f64)
        }),
    )
}

/// The value of `key` in a status file's text ("?" when absent).
pub fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("?")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_instructions_and_guest_milliseconds() {
        let t = render("primary", 1_000_000, Some(750_000));
        assert_eq!(field(&t, "role"), "primary");
        assert_eq!(field(&t, "protected"), "yes");
        assert_eq!(field(&t, "lag_instructions"), "250000");
        assert_eq!(field(&t, "lag_ms"), "2.5");
        let t = render("live", 5, None);
        assert_eq!(field(&t, "protected"), "no");
        assert_eq!(field(&t, "lag_ms"), "-");
        assert_eq!(field(&t, "missing"), "?");
    }
}
