//! Hand-written SVG charts: grouped bars on a logarithmic axis (latency
//! percentiles) and lines over time (throughput per second). Small, with no
//! scripts or external references, so they can be committed and shown as
//! images in Markdown.

use std::fmt::Write as _;

/// Width and height of every chart, in SVG user units (pixels).
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 72.0;

/// Series colours, in order.
const PALETTE: &[&str] = &["#2f6db5", "#e07b22", "#3a9a4a", "#b83b5e", "#7a5cc0"];

/// One named series of values.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

impl Series {
    #[must_use]
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            values,
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(index: usize) -> &'static str {
    PALETTE
        .get(index % PALETTE.len())
        .copied()
        .unwrap_or("#000")
}

fn open(svg: &mut String, title: &str) {
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
<text x="{x}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>
"##,
        x = WIDTH / 2.0,
        title = escape(title),
    );
}

fn legend(svg: &mut String, series: &[Series]) {
    let mut x = LEFT;
    let y = HEIGHT - 18.0;
    for (i, s) in series.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
            y - 10.0,
            colour(i),
            x + 16.0,
            escape(&s.name)
        );
        x += 30.0 + 7.0 * s.name.chars().count() as f64;
    }
}

/// A number for an axis label: no trailing zeros.
fn label(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let magnitude = value.abs();
    let text = if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Grouped bars, one group per category and one bar per series, on a
/// logarithmic value axis (decades), each bar labelled with its value.
#[must_use]
pub fn log_bars(title: &str, unit: &str, categories: &[&str], series: &[Series]) -> String {
    let positive = || {
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lowest = positive().fold(f64::INFINITY, f64::min);
    let highest = positive().fold(0.0_f64, f64::max);
    let (low_exp, high_exp) = if highest > 0.0 {
        let low = lowest.log10().floor();
        let high = highest.log10().ceil().max(low + 1.0);
        (low, high)
    } else {
        (0.0, 1.0)
    };
    let plot_h = HEIGHT - TOP - BOTTOM;
    let plot_w = WIDTH - LEFT - RIGHT;
    let y_of = |value: f64| {
        let v = value.max(10f64.powf(low_exp));
        TOP + plot_h * (1.0 - (v.log10() - low_exp) / (high_exp - low_exp))
    };

    let mut svg = String::new();
    open(&mut svg, title);
    // Decade grid lines.
    let mut exp = low_exp;
    while exp <= high_exp {
        let y = y_of(10f64.powf(exp));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{} {}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(10f64.powf(exp)),
            escape(unit)
        );
        exp += 1.0;
    }
    let groups = categories.len().max(1) as f64;
    let group_w = plot_w / groups;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let gx = LEFT + group_w * c as f64 + group_w * 0.1;
        for (s, one) in series.iter().enumerate() {
            let Some(&value) = one.values.get(c) else {
                continue;
            };
            let x = gx + bar_w * s as f64;
            let y = y_of(value);
            let h = (TOP + plot_h - y).max(0.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {} {}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                bar_w - 2.0,
                colour(s),
                escape(&one.name),
                escape(category),
                label(value),
                escape(unit),
                x + bar_w / 2.0 - 1.0,
                y - 3.0,
                label(value),
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + group_w * (c as f64 + 0.5),
            TOP + plot_h + 16.0,
            escape(category)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333333"/>"##,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * power)
}

/// Lines over `x = 0, 1, 2, ...` (seconds), on a linear axis from 0.
#[must_use]
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let points = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let highest = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(highest);
    let plot_h = HEIGHT - TOP - BOTTOM;
    let plot_w = WIDTH - LEFT - RIGHT;
    let span = (points.max(2) - 1) as f64;
    let x_of = |i: usize| LEFT + plot_w * i as f64 / span;
    let y_of = |v: f64| TOP + plot_h * (1.0 - v / top);

    let mut svg = String::new();
    open(&mut svg, title);
    const Y_TICKS: usize = 5;
    for tick in 0..=Y_TICKS {
        let value = top * tick as f64 / Y_TICKS as f64;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(value)
        );
    }
    let step = points.div_ceil(12).max(1);
    for i in (0..points).step_by(step) {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{i}</text>"#,
            x_of(i),
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 34.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (s, one) in series.iter().enumerate() {
        let mut path = String::new();
        for (i, value) in one.values.iter().enumerate() {
            let _ = write!(path, "{:.1},{:.1} ", x_of(i), y_of(value.max(0.0)));
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.trim_end(),
            colour(s)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333333"/>"##,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_well_formed_and_labelled() {
        let svg = log_bars(
            "Latency <ws>",
            "ms",
            &["p50", "p99"],
            &[
                Series::new("ack", vec![0.4, 3.0]),
                Series::new("delivery", vec![0.6, 12.5]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Latency &lt;ws&gt;"));
        assert!(svg.contains(">12.5<"), "{svg}");
        assert_eq!(svg.matches("<rect x=").count(), 4 + 2, "bars and legend");
        // Decades 0.1 .. 100 ms.
        assert!(
            svg.contains(">0.1 ms<") && svg.contains(">100 ms<"),
            "{svg}"
        );
    }

    #[test]
    fn lines_scale_to_a_nice_ceiling() {
        assert!((nice_ceiling(730.0) - 1000.0).abs() < 1e-9);
        assert!((nice_ceiling(120.0) - 200.0).abs() < 1e-9);
        assert!((nice_ceiling(0.0) - 1.0).abs() < 1e-9);
        let svg = lines(
            "Throughput",
            "second",
            "messages/s",
            &[Series::new("delivered", vec![0.0, 400.0, 730.0])],
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains(">1000<"), "{svg}");
        let empty = lines("Nothing", "s", "n", &[]);
        assert!(empty.contains("</svg>"));
    }
}
