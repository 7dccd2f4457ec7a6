//! The SVG of the `sweep` scenario.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::propagation::SWEEP_SIZES;

/// Draws p50 propagation against cluster size, push on and off, on a log scale.
pub(crate) fn plot(path: &Path, on: &[(usize, f64)], off: &[(usize, f64)]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let all = on.iter().chain(off).map(|&(_, y)| y).filter(|y| *y > 0.0);
    let y_min = all.clone().fold(f64::INFINITY, f64::min);
    let y_max = all.fold(0.0, f64::max);
    let (y_min, y_max) = if y_min.is_finite() {
        (y_min / 2.0, y_max * 2.0)
    } else {
        (0.01, 1000.0)
    };
    let x_max = SWEEP_SIZES.iter().max().copied().unwrap_or(50) as u32 + 5;
    let point = |&(x, y): &(usize, f64)| (x as u32, y.max(y_min));

    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "gossipkv: p50 propagation on loopback (gossip every 100 ms)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("cluster size (nodes)")
        .y_desc("p50 propagation (ms, log scale)")
        .draw()?;
    for (points, color, label) in [(on, BLUE, "eager push on"), (off, RED, "eager push off")] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(point),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(point(p), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
