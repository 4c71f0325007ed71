//! `--html FILE`: the report as one self-contained page — inline SVG charts and CSS, no
//! script and nothing fetched, so it opens anywhere (a CI artifact, a mail attachment).
//!
//! Charts: decisions per second over time (in all and per target), latency percentiles over
//! time, accepted / rejected / errors per second over time, the latency histogram; then the
//! per-target table and the human table. The figures are also embedded as JSON
//! (`<script type="application/json" id="loadgen-data">`) for tools.

use std::fmt::Write as _;

use crate::report::Report;
use crate::timeline::{Bucket, Sample};

/// Chart size in SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
/// Room for the axes' labels.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// Series colours, in order (targets cycle through them).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a chart.
struct Series<'a> {
    name: String,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let d = &report.detail;
    let mut page = String::new();
    let title = format!("tollgate-loadgen: {}", report.target);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        page,
        "<p class=\"summary\">{} over {:.1} s: {} decisions/s, accepted {}, rejected {}, \
         errors {}; latency p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs.</p>",
        report.mode,
        report.duration_s,
        crate::report::thousands(report.decisions_per_sec as u64),
        report.accepted,
        report.rejected,
        report.errors,
        report.latency_us.p50,
        report.latency_us.p99,
        report.latency_us.p999,
    );

    let mut throughput = vec![Series {
        name: "all targets".into(),
        colour: COLOURS[0],
        points: points(&d.timeline, |s| s.all.decisions_per_sec),
    }];
    if report.targets.len() > 1 {
        for (i, name) in report.targets.iter().enumerate() {
            throughput.push(Series {
                name: name.clone(),
                colour: COLOURS[(i + 1) % COLOURS.len()],
                points: points(&d.timeline, |s| {
                    s.targets.get(i).map_or(0.0, |t| t.decisions_per_sec)
                }),
            });
        }
    }
    section(
        &mut page,
        "Throughput over time",
        &line_chart(&throughput, "seconds", "decisions/s"),
    );

    let pct = |name: &str, colour, f: fn(&Sample) -> f64| Series {
        name: name.into(),
        colour,
        points: points(&d.timeline, f),
    };
    let latency = [
        pct("p50", COLOURS[0], |s| s.all.p50_us),
        pct("p90", COLOURS[2], |s| s.all.p90_us),
        pct("p99", COLOURS[3], |s| s.all.p99_us),
        pct("p99.9", COLOURS[1], |s| s.all.p999_us),
    ];
    section(
        &mut page,
        "Latency percentiles over time",
        &line_chart(&latency, "seconds", "µs"),
    );

    let per_sec = |n: u64, s: &Sample| if s.secs > 0.0 { n as f64 / s.secs } else { 0.0 };
    let outcomes = [
        Series {
            name: "accepted/s".into(),
            colour: COLOURS[2],
            points: points(&d.timeline, |s| per_sec(s.all.accepted, s)),
        },
        Series {
            name: "rejected/s".into(),
            colour: COLOURS[3],
            points: points(&d.timeline, |s| per_sec(s.all.rejected, s)),
        },
        Series {
            name: "errors/s".into(),
            colour: COLOURS[1],
            points: points(&d.timeline, |s| per_sec(s.all.errors, s)),
        },
    ];
    section(
        &mut page,
        "Accepted and rejected over time",
        &line_chart(&outcomes, "seconds", "per second"),
    );
    section(
        &mut page,
        "Latency histogram",
        &histogram_chart(&d.histogram),
    );

    let mut table = String::from(
        "<table><tr><th>target</th><th>decisions/s</th><th>accepted</th><th>rejected</th>\
         <th>errors</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th></tr>\n",
    );
    for (name, t) in report.targets.iter().zip(&d.targets) {
        let _ = writeln!(
            table,
            "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{:.1}</td></tr>",
            escape(name),
            t.decisions_per_sec,
            t.accepted,
            t.rejected,
            t.errors,
            t.p50_us,
            t.p90_us,
            t.p99_us,
            t.p999_us
        );
    }
    table.push_str("</table>");
    section(&mut page, "Per target", &table);
    section(
        &mut page,
        "Report",
        &format!("<pre>{}</pre>", escape(&report.table())),
    );

    // `</` cannot appear inside the JSON (escaped below), so the script block cannot end early.
    let data = serde_json::json!({ "report": report, "detail": d });
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"loadgen-data\">{}</script>\n</body></html>",
        data.to_string().replace("</", "<\\/")
    );
    page
}

fn section(page: &mut String, heading: &str, body: &str) {
    let _ = writeln!(page, "<h2>{}</h2>\n{body}", escape(heading));
}

/// `(end of interval, value)` for every sample.
fn points(timeline: &[Sample], value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    timeline.iter().map(|s| (s.end_s, value(s))).collect()
}

/// A line chart of `series` from 0 on both axes, with ticks and a legend.
fn line_chart(series: &[Series], x_label: &str, y_label: &str) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    if all().next().is_none() {
        return "<p>No samples (the measured phase was shorter than one interval).</p>".into();
    }
    let x_max = nice_max(all().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice_max(all().map(|p| p.1).fold(0.0, f64::max));
    let mut svg = frame(x_max, y_max, x_label, y_label);
    for s in series {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", x_pos(x, x_max), y_pos(y, y_max)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            s.colour,
            path.join(" ")
        );
    }
    for (i, s) in series.iter().enumerate() {
        let y = TOP + 14.0 * i as f64;
        let _ = write!(
            svg,
            "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" class=\"legend\">{}</text>",
            WIDTH - RIGHT - 170.0,
            y,
            s.colour,
            WIDTH - RIGHT - 155.0,
            y + 9.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Bars of the latency histogram, one per bucket, labelled by upper bound.
fn histogram_chart(buckets: &[Bucket]) -> String {
    if buckets.is_empty() {
        return "<p>No answered requests.</p>".into();
    }
    let y_max = nice_max(buckets.iter().map(|b| b.count as f64).fold(0.0, f64::max));
    let mut svg = frame(0.0, y_max, "latency up to (µs)", "requests");
    let plot_w = WIDTH - LEFT - RIGHT;
    let bar_w = plot_w / buckets.len() as f64;
    for (i, b) in buckets.iter().enumerate() {
        let x = LEFT + bar_w * i as f64;
        let y = y_pos(b.count as f64, y_max);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
             <title>{} requests in ({}, {}] µs</title></rect>",
            x + 1.0,
            y,
            (bar_w - 2.0).max(1.0),
            (HEIGHT - BOTTOM - y).max(0.0),
            COLOURS[0],
            b.count,
            short(b.from_us),
            short(b.upto_us)
        );
        // Label every bar when they fit, else every other one.
        if buckets.len() <= 16 || i % 2 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.0}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x + bar_w / 2.0,
                HEIGHT - BOTTOM + 14.0,
                short(b.upto_us)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The SVG element with axes, y ticks and, when `x_max` > 0, x ticks. Left open.
fn frame(x_max: f64, y_max: f64, x_label: &str, y_label: &str) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">"
    );
    let (x0, y0, x1, y1) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, TOP);
    let _ = write!(
        svg,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" class=\"axis\"/>\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" class=\"axis\"/>"
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = y_pos(v, y_max);
        let _ = write!(
            svg,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            short(v)
        );
        if x_max > 0.0 {
            let xv = x_max * i as f64 / 4.0;
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.0}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x_pos(xv, x_max),
                y0 + 14.0,
                short(xv)
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{:.0}\" y=\"{:.0}\" class=\"label\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.0}\" class=\"label\" text-anchor=\"middle\" \
         transform=\"rotate(-90 14 {:.0})\">{}</text>",
        (x0 + x1) / 2.0,
        HEIGHT - 6.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    svg
}

fn x_pos(x: f64, x_max: f64) -> f64 {
    LEFT + (WIDTH - LEFT - RIGHT) * if x_max > 0.0 { x / x_max } else { 0.0 }
}

fn y_pos(y: f64, y_max: f64) -> f64 {
    HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * if y_max > 0.0 { y / y_max } else { 0.0 }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ `v` (1 for nothing to show): an axis end
/// whose quarters are round numbers.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let scale = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * scale)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * scale)
}

/// `1.5k`, `20M`, `0.25`: a tick label.
fn short(v: f64) -> String {
    let (n, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if n == n.trunc() {
        0
    } else if n >= 10.0 {
        1
    } else {
        2
    };
    format!("{n:.digits$}{unit}")
}

/// Text made safe for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:820px}\
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.6em}\
.axis{stroke:#444}.grid{stroke:#ddd}.tick{font-size:11px;fill:#444}\
.label{font-size:12px;fill:#222}.legend{font-size:11px;fill:#222}\
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}td:first-child,th:first-child{text-align:left}pre{font-size:.85em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(210.0), 250.0);
        assert_eq!(nice_max(1000.0), 1000.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    #[test]
    fn labels_and_text_are_safe() {
        assert_eq!(short(1500.0), "1.50k");
        assert_eq!(short(20e6), "20M");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
