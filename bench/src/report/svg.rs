//! `latency.svg`: each system's latency spectrum at concurrency 1 and at the first fixed
//! rate, drawn from the six points sluice-load's JSON carries (min, p50, p90, p99, p99.9,
//! max), not from a full histogram.

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use super::input::{CompareFile, Pct, Run, Sys, SYSTEMS};
use super::measure::summary;
use super::Res;

/// `-log10(1 - q)`: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

const X_MAX: f64 = 4.0;

fn spectrum(p: &Pct) -> Vec<(f64, f64)> {
    let max_x = if p.count > 1 {
        (p.count as f64).log10().min(X_MAX)
    } else {
        X_MAX
    };
    let mut pts = vec![
        (0.0, p.min),
        (nines(0.5), p.p50),
        (1.0, p.p90),
        (2.0, p.p99),
        (3.0, p.p999),
    ];
    pts.retain(|(x, _)| *x < max_x);
    pts.push((max_x, p.max));
    pts.into_iter().map(|(x, y)| (x, y.max(1) as f64)).collect()
}

/// Writes the spectra of concurrency 1 and the first fixed rate to `path`.
pub(crate) fn draw(run: &Run, path: &Path) -> Res<()> {
    let mut panels: Vec<(String, Option<&CompareFile>)> =
        vec![("concurrency 1, closed loop".into(), run.c1.as_ref())];
    if let Some((rate, f)) = run.rates.first() {
        panels.push((format!("{rate:.0} req/s, open loop"), f.as_ref()));
    }
    let width = 620 * panels.len() as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len()));
    for ((title, file), area) in panels.iter().zip(areas.iter()) {
        let series: Vec<(Sys, Vec<(f64, f64)>)> = SYSTEMS
            .iter()
            .filter_map(|&sys| {
                summary(*file, sys)
                    .filter(|s| s.latency_us.count > 0)
                    .map(|s| (sys, spectrum(&s.latency_us)))
            })
            .collect();
        let ys = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
        let lo = ys.clone().fold(f64::INFINITY, f64::min);
        let hi = ys.fold(0.0, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            ((lo / 1.3).max(1.0), hi * 1.3)
        } else {
            (1.0, 1000.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("latency spectrum: {title}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..X_MAX, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        let fmt_x = |x: &f64| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                let mut t = format!("{p:.4}");
                while t.ends_with('0') {
                    t.pop();
                }
                t.trim_end_matches('.').to_string()
            }
        };
        let fmt_y = |y: &f64| format!("{y:.0}");
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .x_desc("percentile (log nines; points: min, p50, p90, p99, p99.9, max)")
            .y_desc("latency (µs)")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (sys, pts) in &series {
            let color = sys.color();
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(|e| e.to_string())?
                .label(sys.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
