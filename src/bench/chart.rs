//! SVG charts of a bench run: throughput and latency against concurrency (or offered request
//! rate), one line per server and metric. Drawn with plotters' SVG backend without font
//! support: text goes out as SVG `<text>` and the viewer's fonts render it, so no system font
//! is read.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::LevelReport;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (900, 520);

/// Draws `series` as lines with markers into an SVG file at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let all = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = all.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Writes `throughput.svg` and `latency.svg` into `dir` for the levels of each server;
/// returns the files written.
pub fn write_charts(
    dir: &Path,
    servers: &[&str],
    rows: &[Vec<LevelReport>],
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let open_loop = rows.iter().flatten().any(|r| r.rate.is_some());
    let x_of = |r: &LevelReport| r.rate.unwrap_or(r.clients as f64);
    let x_desc = if open_loop {
        "offered requests/s"
    } else {
        "concurrent clients"
    };
    let name = |i: usize| -> String {
        let label = ["A", "B"].get(i).copied().unwrap_or("?");
        format!("{label} {}", servers.get(i).copied().unwrap_or(""))
    };
    let series = |metric: &dyn Fn(&LevelReport) -> f64, suffix: &str| -> Vec<Series> {
        rows.iter()
            .enumerate()
            .map(|(i, levels)| Series {
                name: format!("{}{suffix}", name(i)),
                points: levels.iter().map(|r| (x_of(r), metric(r))).collect(),
            })
            .collect()
    };
    let throughput = dir.join("throughput.svg");
    line_chart(
        &throughput,
        "Output throughput",
        x_desc,
        "generated tokens/s",
        &series(&|r| r.output_throughput, ""),
    )?;
    let mut lat = series(&|r| r.ttft_ms.p50, " TTFT p50");
    lat.extend(series(&|r| r.ttft_ms.p99, " TTFT p99"));
    lat.extend(series(&|r| r.itl_ms.p50, " ITL p50"));
    lat.extend(series(&|r| r.itl_ms.p99, " ITL p99"));
    let latency = dir.join("latency.svg");
    line_chart(&latency, "Latency", x_desc, "milliseconds", &lat)?;
    Ok(vec![throughput, latency])
}
