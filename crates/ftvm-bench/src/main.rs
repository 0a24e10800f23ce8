//! `ftvm-bench RESULTS.json OUT.svg`: a bar chart of ftvm beside QEMU, from bench/all.py's
//! results. Each metric is shown relative to QEMU (plain TCG) = 1; higher is better.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// (label, engine -> value, higher is better)
fn metrics(v: &Value) -> Vec<(String, Vec<(String, f64)>)> {
    let mut out = Vec::new();
    let engines = ["ftvm", "qemu", "qemu-icount"];
    let cpu = &v["cpu"]["results"];
    for (key, label, higher) in [
        ("loop_mips", "bare-metal loop (MIPS)", true),
        ("cpu_mips", "guest CPU program (MIPS)", true),
        ("boot_s", "boot to ready (1/s)", false),
    ] {
        let vals: Vec<(String, f64)> = engines
            .iter()
            .filter_map(|e| {
                let x = cpu[e][key].as_f64()?;
                Some((e.to_string(), if higher { x } else { 1.0 / x }))
            })
            .collect();
        if !vals.is_empty() {
            out.push((label.to_string(), vals));
        }
    }
    let redis = &v["redis"]["results"];
    for op in ["SET", "GET"] {
        let vals: Vec<(String, f64)> = [
            "ftvm",
            "ftvm-pair",
            "ftvm-pair-epoch",
            "qemu",
            "qemu-icount",
        ]
        .iter()
        .filter_map(|e| Some((e.to_string(), redis[e][op]["rps"].as_f64()?)))
        .collect();
        // Relative figures need QEMU's.
        if vals.iter().any(|(e, _)| e == "qemu") {
            out.push((format!("redis {op} (req/s)"), vals));
        }
    }
    out
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: ftvm-bench RESULTS.json OUT.svg");
    }
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&args[1]).with_context(|| format!("cannot read {}", args[1]))?,
    )
    .context("results are not JSON")?;
    let ms = metrics(&v);
    if ms.is_empty() {
        bail!("no results to draw");
    }
    let engines = [
        "ftvm",
        "ftvm-pair",
        "ftvm-pair-epoch",
        "qemu",
        "qemu-icount",
    ];
    let colors = [
        RGBColor(200, 60, 40),
        RGBColor(230, 130, 60),
        RGBColor(240, 180, 90),
        RGBColor(60, 100, 200),
        RGBColor(120, 160, 220),
    ];
    let rows = ms.len();
    let root = SVGBackend::new(&args[2], (900, 120 + 75 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = ms
        .iter()
        .flat_map(|(_, vals)| {
            let base = vals.iter().find(|(e, _)| e == "qemu").map_or(1.0, |x| x.1);
            vals.iter().map(move |(_, x)| x / base)
        })
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ftvm beside QEMU (relative to QEMU TCG = 1, higher is better)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(220)
        .build_cartesian_2d(0.0..max, 0.0..rows as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|y| {
            let i = (*y - 0.5).round() as usize;
            ms.get(rows.saturating_sub(1).saturating_sub(i))
                .map_or(String::new(), |m| m.0.clone())
        })
        .x_desc("relative to QEMU (TCG)")
        .draw()?;
    for (row, (_, vals)) in ms.iter().enumerate() {
        let base = vals.iter().find(|(e, _)| e == "qemu").map_or(1.0, |x| x.1);
        let y0 = (rows - 1 - row) as f64;
        // The row's bars, top to bottom in the order of `engines`.
        let bars: Vec<(usize, &str, f64)> = engines
            .iter()
            .enumerate()
            .filter_map(|(k, e)| Some((k, *e, vals.iter().find(|(n, _)| n == e)?.1)))
            .collect();
        let h = 0.8 / bars.len() as f64;
        for (i, &(k, e, x)) in bars.iter().rev().enumerate() {
            let r = x / base;
            let (a, b) = (
                y0 + 0.1 + h * i as f64,
                y0 + 0.1 + h * (i + 1) as f64 - 0.03,
            );
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, a), (r, b)],
                colors[k].filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{e} {r:.2}"),
                (r + max * 0.01, (a + b) / 2.0 + 0.08),
                ("sans-serif", 12),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}
