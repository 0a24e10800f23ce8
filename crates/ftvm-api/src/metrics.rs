//! The member's metrics in the Prometheus text format (version 0.0.4).

use std::fmt::Write;

use ftvm_machine::board::INSTRUCTIONS_PER_MS;
use ftvm_runner::telemetry::{Role, Telemetry, HOLD_BOUNDS};

/// Every metric, with its help and type; `rate` is the instructions per second over the last
/// sample, and `migrating` whether a live migration is under way.
pub fn render(t: &Telemetry, rate: f64, migrating: bool) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(o, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "ftvm_instructions_retired_total",
        "counter",
        "Guest instructions retired (every hart).",
        &one(t.instructions().to_string()),
    );
    metric(
        "ftvm_instructions_per_second",
        "gauge",
        "Guest instructions retired per second of host time, over the last second.",
        &one(format!("{rate:.0}")),
    );
    metric(
        "ftvm_uptime_seconds",
        "gauge",
        "Seconds since this ftvm started.",
        &one(format!("{:.3}", t.uptime().as_secs_f64())),
    );
    let role = t.role();
    let roles: Vec<(String, String)> = [
        Role::Starting,
        Role::Live,
        Role::Primary,
        Role::Backup,
        Role::Stopped,
    ]
    .iter()
    .map(|r| {
        (
            format!("{{role=\"{}\"}}", r.name()),
            u8::from(*r == role).to_string(),
        )
    })
    .collect();
    metric(
        "ftvm_role",
        "gauge",
        "This member's role (1 for the one it has).",
        &roles,
    );
    metric(
        "ftvm_paused",
        "gauge",
        "1 while an operator has paused the guest.",
        &one(u8::from(t.paused()).to_string()),
    );
    metric(
        "ftvm_protected",
        "gauge",
        "1 while a backup holds the guest's log (or, on a backup, while it follows a primary).",
        &one(u8::from(t.peer().is_some()).to_string()),
    );
    let lag = t.lag().unwrap_or(0);
    metric(
        "ftvm_replication_lag_instructions",
        "gauge",
        "How far the backup trails the primary, in instructions (0 when unprotected).",
        &one(lag.to_string()),
    );
    metric(
        "ftvm_replication_lag_seconds",
        "gauge",
        "How far the backup trails the primary, in guest seconds (0 when unprotected).",
        &one(format!(
            "{:.6}",
            lag as f64 / INSTRUCTIONS_PER_MS as f64 / 1e3
        )),
    );
    let exits: Vec<(String, String)> = t
        .exits()
        .into_iter()
        .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.to_string()))
        .collect();
    metric(
        "ftvm_exits_total",
        "counter",
        "Turns of the machine's run loop, by how they ended.",
        &exits,
    );
    let (cumulative, count, sum) = t.hold_histogram();
    let mut lines: Vec<(String, String)> = HOLD_BOUNDS
        .iter()
        .zip(&cumulative)
        .map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), c.to_string()))
        .collect();
    lines.push((
        "_bucket{le=\"+Inf\"}".into(),
        cumulative.last().copied().unwrap_or(0).to_string(),
    ));
    lines.push(("_sum".into(), format!("{sum:.6}")));
    lines.push(("_count".into(), count.to_string()));
    metric(
        "ftvm_output_hold_seconds",
        "histogram",
        "How long each output (frame, console bytes) waited for the backup's acknowledgement.",
        &lines,
    );
    metric(
        "ftvm_log_bytes_total",
        "counter",
        "Bytes of input log written (to a file, or sent to the backups).",
        &one(t.log_bytes().to_string()),
    );
    metric(
        "ftvm_failovers_total",
        "counter",
        "Times this member took the guest over from a failed primary.",
        &one(t
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string()),
    );
    metric(
        "ftvm_generation",
        "gauge",
        "The pair's generation (the arbiter's round) this member is in.",
        &one(t
            .generation
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string()),
    );
    let (attaches, paused) = t.attach_pauses();
    metric(
        "ftvm_attaches_total",
        "counter",
        "Backups that attached to this guest (or replicas that joined its group).",
        &one(attaches.to_string()),
    );
    metric(
        "ftvm_attach_pause_seconds_total",
        "counter",
        "Time the guest paused for attaching backups, in all.",
        &one(format!("{paused:.6}")),
    );
    metric(
        "ftvm_migration_active",
        "gauge",
        "1 while a live migration of this guest is under way.",
        &one(u8::from(migrating).to_string()),
    );
    let (copied, round) = t.copy();
    metric(
        "ftvm_copy_active",
        "gauge",
        "1 while this guest's state is copied to an attaching backup or a migration's destination (pre-copy).",
        &one(u8::from(round.is_some()).to_string()),
    );
    metric(
        "ftvm_copy_round",
        "gauge",
        "The pre-copy round under way (0 when no copy is).",
        &one(round.unwrap_or(0).to_string()),
    );
    metric(
        "ftvm_copy_bytes_total",
        "counter",
        "RAM and disk bytes copied to attaching backups and migration destinations.",
        &one(copied.to_string()),
    );
    metric(
        "ftvm_vote_mismatches_total",
        "counter",
        "Times this replica's state or outputs disagreed with its leader's.",
        &one(t
            .vote_mismatches
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string()),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_metric_has_help_and_type_and_the_histogram_is_cumulative() {
        let t = Telemetry::new();
        t.update(Role::Primary, 2_000_000, Some(1_500_000));
        t.held(Duration::from_micros(300));
        t.held(Duration::from_millis(20));
        t.exit(2);
        let text = render(&t, 1.5e8, false);
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                names.push(rest.split(' ').next().unwrap().to_string());
            }
        }
        for n in &names {
            assert!(text.contains(&format!("# HELP {n} ")), "{n} has no help");
        }
        assert!(text.contains("ftvm_role{role=\"primary\"} 1\n"));
        assert!(text.contains("ftvm_role{role=\"backup\"} 0\n"));
        assert!(text.contains("ftvm_replication_lag_instructions 500000\n"));
        assert!(text.contains("ftvm_output_hold_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("ftvm_output_hold_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("ftvm_output_hold_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("ftvm_output_hold_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("ftvm_output_hold_seconds_count 2\n"));
        assert!(text.contains("ftvm_exits_total{kind=\"idle\"} 1\n"));
        assert!(text.contains("ftvm_instructions_per_second 150000000\n"));
    }
}
