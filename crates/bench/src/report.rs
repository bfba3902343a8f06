//! `bench report`: result files of `bench serve` → a Markdown report with SVG plots
//! (throughput, TTFT and inter-token latency against load, latency CDFs), every file
//! a series, so two servers or two devices compare at a glance.

use crate::serve::{Load, Record, Summary};
use plotters::prelude::*;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {message}")]
    Input { path: String, message: String },
    #[error("writing {path}: {message}")]
    Output { path: String, message: String },
    #[error("{0} has no runs")]
    Empty(String),
}

#[derive(Deserialize)]
pub struct RunResult {
    pub summary: Summary,
    pub requests: Vec<Record>,
}

#[derive(Deserialize)]
pub struct ResultFile {
    #[serde(default)]
    pub label: String,
    pub runs: Vec<RunResult>,
}

pub fn read(path: &Path) -> Result<ResultFile, ReportError> {
    let name = path.display().to_string();
    let bad = |message: String| ReportError::Input {
        path: name.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut file: ResultFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.runs.is_empty() {
        return Err(ReportError::Empty(name));
    }
    if file.label.is_empty() {
        file.label = path
            .file_stem()
            .map_or(name.clone(), |s| s.to_string_lossy().into_owned());
    }
    Ok(file)
}

fn x_of(load: &Load) -> f64 {
    match load {
        Load::Concurrency(c) => *c as f64,
        Load::Rate(r) => *r,
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One line per (label, points); `faint` series are drawn thinner (p99 beside p50).
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    faint: bool,
}

fn finite_max(series: &[Series], f: impl Fn(&(f64, f64)) -> f64) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(&f))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ReportError> {
    let err = |e: String| ReportError::Output {
        path: path.display().to_string(),
        message: e,
    };
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let x_max = finite_max(series, |p| p.0).max(1.0) * 1.05;
    let y_max = finite_max(series, |p| p.1).max(1e-9) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for s in series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let style = s.color.stroke_width(if s.faint { 1 } else { 2 });
        let color = s.color;
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, s.color.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Writes `report.md` and its SVG plots into `dir`.
pub fn write(files: &[ResultFile], dir: &Path) -> Result<(), ReportError> {
    let out_err = |p: &Path, e: std::io::Error| ReportError::Output {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let per_file = |f: &dyn Fn(&Summary) -> f64, suffix: &str, faint: bool| -> Vec<Series> {
        files
            .iter()
            .enumerate()
            .map(|(i, file)| Series {
                label: format!("{}{suffix}", file.label),
                points: file
                    .runs
                    .iter()
                    .map(|r| (x_of(&r.summary.load), f(&r.summary)))
                    .collect(),
                color: color(i),
                faint,
            })
            .collect()
    };
    let x_label = "concurrent requests (or requests/s)";
    line_chart(
        &dir.join("throughput.svg"),
        "Output throughput",
        x_label,
        "tokens/s",
        &per_file(&|s| s.output_throughput, "", false),
    )?;
    for (name, title, get) in [
        (
            "ttft.svg",
            "Time to first token",
            (|s: &Summary| (s.ttft_ms.median, s.ttft_ms.p99)) as fn(&Summary) -> (f64, f64),
        ),
        ("itl.svg", "Inter-token latency", |s: &Summary| {
            (s.itl_ms.median, s.itl_ms.p99)
        }),
    ] {
        let mut series = per_file(&|s| get(s).0, " p50", false);
        series.extend(per_file(&|s| get(s).1, " p99", true));
        line_chart(&dir.join(name), title, x_label, "milliseconds", &series)?;
    }
    let mut cdf = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for run in &file.runs {
            let mut e2e: Vec<f64> = run
                .requests
                .iter()
                .filter(|r| r.error.is_none())
                .map(|r| r.e2e_s * 1e3)
                .collect();
            e2e.sort_by(f64::total_cmp);
            let n = e2e.len() as f64;
            cdf.push(Series {
                label: format!("{} {}", file.label, load_name(&run.summary.load)),
                points: e2e
                    .iter()
                    .enumerate()
                    .map(|(k, &ms)| (ms, (k + 1) as f64 / n))
                    .collect(),
                color: color(i),
                faint: false,
            });
        }
    }
    line_chart(
        &dir.join("e2e_cdf.svg"),
        "End-to-end latency CDF",
        "milliseconds",
        "fraction of requests",
        &cdf,
    )?;

    let mut md = String::from("# Serving benchmark\n\n| run | load | ok/all | req/s | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for file in files {
        for r in &file.runs {
            let s = &r.summary;
            let errors: Vec<String> = s.errors.iter().map(|(k, n)| format!("{n}× {k}")).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {}/{} | {:.2} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {:.0} / {:.0} | {} |",
                file.label, load_name(&s.load), s.completed, s.requests, s.request_throughput, s.output_throughput,
                s.ttft_ms.median, s.ttft_ms.p99, s.itl_ms.median, s.itl_ms.p99, s.e2e_ms.median, s.e2e_ms.p99,
                if errors.is_empty() { "-".into() } else { errors.join(", ") }
            );
        }
    }
    md.push_str("\n![throughput](throughput.svg)\n\n![TTFT](ttft.svg)\n\n![ITL](itl.svg)\n\n![E2E CDF](e2e_cdf.svg)\n");
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| out_err(&path, e))
}

fn load_name(l: &Load) -> String {
    match l {
        Load::Concurrency(c) => format!("c={c}"),
        Load::Rate(r) => format!("{r}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{summarize, Slo};

    fn file(label: &str, scale: f64) -> ResultFile {
        let runs = [1, 4, 8]
            .iter()
            .map(|&c| {
                let requests: Vec<Record> = (0..10)
                    .map(|k| Record {
                        ttft_s: Some(0.05 * scale * c as f64),
                        itl_s: vec![0.01 * scale; 9],
                        e2e_s: 0.2 * scale + 0.01 * k as f64,
                        output_tokens: 10,
                        ..Default::default()
                    })
                    .collect();
                RunResult {
                    summary: summarize(Load::Concurrency(c), &requests, 1.0, &Slo::default()),
                    requests,
                }
            })
            .collect();
        ResultFile {
            label: label.into(),
            runs,
        }
    }

    #[test]
    fn a_report_has_its_table_and_four_plots() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        write(&[file("ours", 1.0), file("theirs", 2.0)], &dir).unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert_eq!(md.matches("| ours |").count(), 3);
        assert_eq!(md.matches("| theirs |").count(), 3);
        for svg in ["throughput.svg", "ttft.svg", "itl.svg", "e2e_cdf.svg"] {
            let text = std::fs::read_to_string(dir.join(svg)).unwrap();
            assert!(text.starts_with("<svg") && text.contains("theirs"), "{svg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
