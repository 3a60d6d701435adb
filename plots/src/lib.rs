//! PNG line charts with text that renders on any host.
//!
//! plotters normally finds fonts through font-kit and fontconfig, which fails on a bare
//! machine (no `/usr/share/fonts`). We build it without default features and register the
//! Noto Sans font that the `ttf-noto-sans` crate embeds (Apache-2.0) for the generic families
//! plotters uses, once per process. Written by hand on top of plotters because no kept crate
//! offers "a chart with a band and a legend, no system fonts" in one call.
#![warn(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// A chart that could not be drawn or written: its file, and the cause kept (plotters'
/// drawing error, or the file's I/O error).
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot draw chart: {source}", path.display())]
pub struct PlotError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

static FONTS: Once = Once::new();

fn fonts() {
    FONTS.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The embedded font is valid; a failure here would show as missing text.
            let _ = register_font(family, FontStyle::Normal, ttf_noto_sans::REGULAR);
        }
    });
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// RGB.
    pub color: (u8, u8, u8),
    /// Draw markers at the points instead of a line.
    pub markers: bool,
}

/// A shaded band between `lower` and `upper` (same x values).
#[derive(Debug, Clone)]
pub struct Band {
    pub label: String,
    pub lower: Vec<(f64, f64)>,
    pub upper: Vec<(f64, f64)>,
    pub color: (u8, u8, u8),
}

/// A whole chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Logarithmic x axis (base 2 labels suit FROC's 1/8 … 8).
    pub log_x: bool,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
    /// Text drawn at data coordinates (e.g. bin counts).
    pub annotations: Vec<(f64, f64, String)>,
}

impl Series {
    /// A line through `points`.
    pub fn line(label: &str, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Series {
        Series {
            label: label.into(),
            points,
            color,
            markers: false,
        }
    }

    /// Markers at `points`, no line.
    pub fn marks(label: &str, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Series {
        Series {
            markers: true,
            ..Series::line(label, points, color)
        }
    }
}

impl Chart {
    /// An empty chart over the unit square (ROC, PR, reliability), linear axes.
    pub fn unit(title: &str, x: &str, y: &str) -> Chart {
        Chart {
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            log_x: false,
            series: vec![],
            bands: vec![],
            annotations: vec![],
        }
    }
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Draws `chart` into a PNG at `path` (800 × 560).
///
/// The PNG is drawn under a temporary name beside `path` and renamed over it, so a reader
/// (or a crash) never sees a half-written chart.
pub fn line_chart(chart: &Chart, path: &Path) -> Result<(), PlotError> {
    files::replace_with(path, |tmp| draw_line_chart(chart, tmp)).map_err(|e| PlotError {
        path: path.to_path_buf(),
        source: match e {
            // The drawing's own error travels inside the I/O error (`get_ref` gives it).
            files::Error::Io { source, .. } => Box::new(source),
            other => Box::new(other),
        },
    })
}

fn draw_line_chart(chart: &Chart, path: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    fonts();
    let root = BitMapBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = chart.x_range;
    let (y0, y1) = chart.y_range;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64);
    macro_rules! draw {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(&chart.x_label)
                .y_desc(&chart.y_label)
                .axis_desc_style(("sans-serif", 18))
                .label_style(("sans-serif", 14))
                .draw()?;
            for b in &chart.bands {
                let color = rgb(b.color).mix(0.2);
                let mut poly: Vec<(f64, f64)> = b.upper.clone();
                poly.extend(b.lower.iter().rev().copied());
                ctx.draw_series(std::iter::once(Polygon::new(poly, color.filled())))?
                    .label(&b.label)
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
            }
            for s in &chart.series {
                let color = rgb(s.color);
                // A series without a label stays out of the legend.
                if s.markers {
                    let a = ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
                    if !s.label.is_empty() {
                        a.label(&s.label)
                            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
                    }
                } else {
                    let a = ctx.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?;
                    if !s.label.is_empty() {
                        a.label(&s.label)
                            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                    }
                }
            }
            for (x, y, text) in &chart.annotations {
                ctx.draw_series(std::iter::once(Text::new(text.clone(), (*x, *y), ("sans-serif", 12))))?;
            }
            if chart.series.iter().any(|s| !s.label.is_empty()) || !chart.bands.is_empty() {
                ctx.configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 15))
                    .draw()?;
            }
        }};
    }
    if chart.log_x {
        draw!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?);
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, y0..y1)?);
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_band_and_markers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.png");
        let pts: Vec<(f64, f64)> = (0..7).map(|i| (2f64.powi(i - 3), 0.5 + 0.05 * i as f64)).collect();
        let chart = Chart {
            title: "FROC".into(),
            x_label: "false positives per scan".into(),
            y_label: "sensitivity".into(),
            x_range: (0.125, 8.0),
            y_range: (0.0, 1.0),
            log_x: true,
            series: vec![Series {
                label: "mean".into(),
                points: pts.clone(),
                color: (0, 0, 200),
                markers: true,
            }],
            bands: vec![Band {
                label: "95% CI".into(),
                lower: pts.iter().map(|&(x, y)| (x, y - 0.1)).collect(),
                upper: pts.iter().map(|&(x, y)| (x, y + 0.1)).collect(),
                color: (0, 0, 200),
            }],
            annotations: vec![(1.0, 0.2, "n = 12".into())],
        };
        line_chart(&chart, &p).expect("draw");
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5_000, "suspiciously small PNG: {} bytes", bytes.len());
    }

    /// A chart that cannot be written names its file and keeps the cause; nothing is left
    /// in its place.
    #[test]
    fn a_chart_that_cannot_be_written_keeps_its_cause() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("no_such_folder/c.png");
        let chart = Chart::unit("t", "x", "y");
        let e = line_chart(&chart, &p).expect_err("no folder");
        assert_eq!(e.path, p);
        assert!(std::error::Error::source(&e).is_some());
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot draw chart: ", p.display())),
            "{e}"
        );
        assert!(!p.exists());
    }
}
