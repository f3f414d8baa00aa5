//! The report's plots, drawn as SVG with plotters: horizontal bars of ratios to a baseline,
//! and lines of a value against a scaling axis.

use std::path::Path;

use plotters::prelude::*;

/// One bar: its label and the ratio of medians.
pub struct Bar {
    pub label: String,
    pub ratio: f64,
}

const BAR_COLOUR: RGBColor = RGBColor(52, 101, 164);
const WORSE_COLOUR: RGBColor = RGBColor(204, 85, 0);

/// Horizontal bars of ratios to a baseline, with a line at 1.0. `higher_is_better` picks
/// which side of 1.0 is drawn as a win.
pub fn ratio_bars(
    file: &Path,
    title: &str,
    axis: &str,
    bars: &[Bar],
    higher_is_better: bool,
) -> Result<(), String> {
    if bars.is_empty() {
        return Ok(());
    }
    let n = i32::try_from(bars.len()).map_err(|e| e.to_string())?;
    let height = 90 + 34 * u32::try_from(bars.len()).map_err(|e| e.to_string())?;
    let max = bars
        .iter()
        .map(|b| b.ratio)
        .filter(|r| r.is_finite())
        .fold(1.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(file, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(400)
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| bars.get(i))
                .map_or_else(String::new, |b| b.label.clone()),
            _ => String::new(),
        })
        .x_desc(axis)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().zip(0..).map(|(b, i)| {
            let better = if higher_is_better {
                b.ratio >= 1.0
            } else {
                b.ratio <= 1.0
            };
            let colour = if better { BAR_COLOUR } else { WORSE_COLOUR };
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (b.ratio, SegmentValue::Exact(i + 1)),
                ],
                colour.mix(0.75).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().zip(0..).map(|(b, i)| {
            Text::new(
                format!("{:.2}x", b.ratio),
                (b.ratio, SegmentValue::CenterOf(i)),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One line: a name and its (x, median, min, max) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

const LINE_COLOURS: [RGBColor; 4] = [
    RGBColor(204, 85, 0),
    RGBColor(52, 101, 164),
    RGBColor(78, 154, 6),
    RGBColor(117, 80, 123),
];

/// Lines of medians with min-max whiskers against a log-scale x axis.
pub fn scaling_lines(
    file: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<(), String> {
    let points = lines.iter().flat_map(|l| l.points.iter());
    let (mut x_max, mut y_max) = (1.0_f64, 0.0_f64);
    for &(x, _, _, hi) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(hi);
    }
    let root = SVGBackend::new(file, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0.8_f64..x_max * 1.5).log_scale(), 0.0..y_max * 1.15)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if y_max < 10.0 {
                format!("{y:.2}")
            } else {
                format!("{y:.0}")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (line, colour) in lines.iter().zip(LINE_COLOURS.iter().cycle()) {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().map(|&(x, y, _, _)| (x, y)),
                colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&(x, y, _, _)| Circle::new((x, y), 4, colour.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&(x, _, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], colour)),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
