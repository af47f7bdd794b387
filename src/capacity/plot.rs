//! `--plot FILE.svg`: one panel per resource, stacked: the history, the
//! forecast with its 95 % band, the limit line, and the date they cross.
//! plotters with only its SVG backend (no font crates: SVG text is laid out
//! by the viewer).

use std::path::Path;

use plotters::prelude::*;

use super::report::Chart;
use super::CapacityError;

const PANEL: (u32, u32) = (1000, 330);

fn date(t: f64) -> String {
    chrono::DateTime::from_timestamp((t * 86_400.0) as i64, 0)
        .map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string())
}

fn human(v: f64, unit: &str) -> String {
    if unit == "bytes" {
        super::render::bytes(v)
    } else if v.abs() >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Writes every chart into one SVG file.
pub fn write(path: &Path, charts: &[Chart]) -> Result<(), CapacityError> {
    let err = |e: String| CapacityError::Plot {
        path: path.display().to_string(),
        message: e,
    };
    let n = charts.len().max(1) as u32;
    let root = SVGBackend::new(path, (PANEL.0, PANEL.1 * n)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((n as usize, 1));
    for (area, c) in panels.iter().zip(charts) {
        panel(area, c).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

type DrawError = DrawingAreaErrorKind<std::io::Error>;

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    c: &Chart,
) -> Result<(), DrawError> {
    let ts = c
        .history
        .iter()
        .map(|p| p.0)
        .chain(c.forecast.iter().map(|p| p.0));
    let (x0, x1) = ts.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| {
        (a.min(t), b.max(t))
    });
    if !x0.is_finite() || x1 <= x0 {
        area.draw(&Text::new(
            format!("{}: no history yet", c.title),
            (20, 20),
            ("sans-serif", 18),
        ))?;
        return Ok(());
    }
    let data_max = c
        .history
        .iter()
        .map(|p| p.1)
        .chain(c.forecast.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    // The limit is drawn when the forecast reaches it or it is near the
    // data; a far limit would flatten the history into the axis.
    let limit = c
        .limit
        .filter(|l| c.crossing.is_some() || *l <= data_max * 2.0);
    let y_max = c
        .history
        .iter()
        .map(|p| p.1)
        .chain(c.forecast.iter().map(|p| p.3.min(data_max * 1.5)))
        .chain(limit)
        .fold(0.0_f64, f64::max)
        * 1.1;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, 0.0..y_max)?;
    let unit = c.unit;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|t| date(*t))
        .y_label_formatter(&|v| human(*v, unit))
        .draw()?;
    if !c.forecast.is_empty() {
        let band: Vec<(f64, f64)> = c
            .forecast
            .iter()
            .map(|p| (p.0, p.3.min(y_max)))
            .chain(c.forecast.iter().rev().map(|p| (p.0, p.2)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.15))))?
            .label("95 % band")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 4), (x + 16, y + 4)], BLUE.mix(0.15).filled())
            });
        chart
            .draw_series(LineSeries::new(
                c.forecast.iter().map(|p| (p.0, p.1.min(y_max))),
                BLUE.stroke_width(2),
            ))?
            .label("forecast")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    }
    if !c.history.is_empty() {
        chart
            .draw_series(LineSeries::new(
                c.history.iter().copied(),
                BLACK.stroke_width(2),
            ))?
            .label("history")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    }
    if let Some(l) = limit {
        chart
            .draw_series(LineSeries::new(vec![(x0, l), (x1, l)], RED.stroke_width(2)))?
            .label(format!("limit {}", human(l, unit)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        if let Some(t) = c.crossing.filter(|t| *t >= x0 && *t <= x1) {
            chart.draw_series(LineSeries::new(vec![(t, 0.0), (t, l)], RED.mix(0.6)))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("reached {}", date(t)),
                (t, l),
                ("sans-serif", 14).into_font().color(&RED),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
