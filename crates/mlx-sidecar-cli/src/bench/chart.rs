//! Draws the bench's figures as an SVG chart (plotters): aggregate tokens per second, decode
//! tokens per second per stream, and time to first token (p50), each against concurrency, one
//! line per path.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::PathKind;
use super::measure::LevelSummary;
use super::report::Report;

fn color(kind: PathKind) -> RGBColor {
    match kind {
        PathKind::Sidecar => RGBColor(0x1f, 0x77, 0xb4),
        PathKind::Replicas => RGBColor(0x94, 0x67, 0xbd),
        PathKind::Inprocess => RGBColor(0x2c, 0xa0, 0x2c),
        PathKind::Http => RGBColor(0xd6, 0x27, 0x28),
        PathKind::Daemon => RGBColor(0x94, 0x67, 0xbd),
        PathKind::DaemonHttp => RGBColor(0xff, 0x7f, 0x0e),
    }
}

type Metric = (&'static str, &'static str, fn(&LevelSummary) -> f64);

const METRICS: [Metric; 3] = [
    ("Aggregate throughput", "tokens/s", |l| l.aggregate_tps),
    ("Decode speed per stream", "tokens/s", |l| {
        l.decode_tps_per_stream
    }),
    ("Time to first token (p50)", "ms", |l| l.ttft_p50_ms),
];

/// Writes the chart to `path` (SVG).
pub(crate) fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let mut levels: Vec<usize> = report
        .paths
        .iter()
        .flat_map(|p| p.levels.iter().map(|l| l.concurrency))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut title = format!(
        "mlx-sidecar bench: prompt {} tokens, {} generated per request",
        report.workload.prompt_tokens, report.workload.max_tokens
    );
    if report.workload.passes > 1 {
        title.push_str(&format!(", {} passes", report.workload.passes));
    }
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, METRICS.len()));
    let x_max = levels.len().saturating_sub(1).max(1) as f64;
    for (area, (name, unit, metric)) in panels.iter().zip(METRICS) {
        let y_max = report
            .paths
            .iter()
            .flat_map(|p| p.levels.iter().map(metric))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2f64..x_max + 0.2, 0f64..y_max)
            .map_err(|e| err(&e))?;
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                levels
                    .get(i as usize)
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(levels.len().max(2))
            .x_label_formatter(&label)
            .x_desc("concurrency")
            .y_desc(unit)
            .draw()
            .map_err(|e| err(&e))?;
        for p in &report.paths {
            let c = color(p.path);
            let points: Vec<(f64, f64)> = p
                .levels
                .iter()
                .filter_map(|l| {
                    let i = levels.iter().position(|&c| c == l.concurrency)?;
                    Some((i as f64, metric(l)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(p.path.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&pt| Circle::new(pt, 4, c.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
