//! The `--chart` SVG (plotters): tokens per second over the run, with each fault drawn as
//! a shaded band from injection to service being back (a red edge where it never came back).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::{inject::FaultRecord, observe::Marks, plan::FaultKind};

fn color(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill => RGBColor(0xd6, 0x27, 0x28),
        FaultKind::Stop => RGBColor(0xff, 0x7f, 0x0e),
        FaultKind::DeleteSocket => RGBColor(0x94, 0x67, 0xbd),
        FaultKind::SlowStart => RGBColor(0x8c, 0x56, 0x4b),
    }
}

/// Writes the chart to `path`.
pub(crate) fn draw(
    path: &Path,
    title: &str,
    duration: f64,
    marks: &Marks,
    faults: &[FaultRecord],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let duration = duration.max(1.0);
    // About 300 bins, at least a quarter of a second each.
    let bin = (duration / 300.0).max(0.25);
    let bins = (duration / bin).ceil() as usize + 1;
    let mut per_bin = vec![0u64; bins];
    for &(t, n) in &marks.tokens {
        if let Some(slot) = per_bin.get_mut((t / bin) as usize) {
            *slot += u64::from(n);
        }
    }
    let series: Vec<(f64, f64)> = per_bin
        .iter()
        .enumerate()
        .map(|(i, &n)| (i as f64 * bin, n as f64 / bin))
        .collect();
    let y_max = series.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;

    let root = SVGBackend::new(path, (1400, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..duration, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load began")
        .y_desc("tokens / s")
        .draw()
        .map_err(|e| err(&e))?;
    let mut seen_kinds = Vec::new();
    for f in faults {
        let c = color(f.kind);
        let end = f.serving.unwrap_or(duration);
        let band = chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f.at, 0.0), (end.max(f.at + bin / 4.0), y_max)],
                c.mix(0.18).filled(),
            )))
            .map_err(|e| err(&e))?;
        if !seen_kinds.contains(&f.kind) {
            seen_kinds.push(f.kind);
            band.label(format!("{} (to serving again)", f.kind))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], c.mix(0.4).filled())
                });
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(f.at, 0.0), (f.at, y_max)],
                c.stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        if f.serving.is_none() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(end, 0.0), (end, y_max)],
                    RED.stroke_width(3),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    let blue = RGBColor(0x1f, 0x77, 0xb4);
    chart
        .draw_series(LineSeries::new(series, blue.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("tokens / s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
