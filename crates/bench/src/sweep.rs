//! The quantization ablation: one row per model file (size, bits per weight, perplexity,
//! prompt and generation speed), written as Markdown, CSV and JSON with a plot of
//! perplexity against generation speed.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AblationRow {
    pub model: String,
    /// The weight types in the file, most bytes first (e.g. "Q4_1").
    pub weight_type: String,
    pub size_bytes: u64,
    pub params: u64,
    pub ppl: f64,
    pub ppl_err: f64,
    pub pp_ts: f64,
    pub tg_ts: f64,
    pub prompt_len: usize,
    pub gen_len: usize,
}

impl AblationRow {
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.size_bytes as f64 * 8.0 / self.params as f64
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {message}")]
pub struct SweepError {
    path: String,
    message: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> SweepError {
    SweepError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub fn markdown(rows: &[AblationRow]) -> String {
    let (p, n) = rows.first().map_or((0, 0), |r| (r.prompt_len, r.gen_len));
    let mut md = format!("| model | type | size MiB | bits/weight | PPL | pp{p} t/s | tg{n} t/s |\n|---|---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {:.4} ± {:.4} | {:.1} | {:.1} |",
            r.model,
            r.weight_type,
            r.size_bytes as f64 / (1 << 20) as f64,
            r.bits_per_weight(),
            r.ppl,
            r.ppl_err,
            r.pp_ts,
            r.tg_ts
        );
    }
    md
}

pub fn csv(rows: &[AblationRow]) -> String {
    let mut out = String::from("model,weight_type,size_bytes,params,bits_per_weight,ppl,ppl_err,pp_ts,tg_ts,prompt_len,gen_len\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.4},{:.6},{:.6},{:.3},{:.3},{},{}",
            r.model,
            r.weight_type,
            r.size_bytes,
            r.params,
            r.bits_per_weight(),
            r.ppl,
            r.ppl_err,
            r.pp_ts,
            r.tg_ts,
            r.prompt_len,
            r.gen_len
        );
    }
    out
}

/// `ablation.md`, `ablation.csv`, `ablation.json` and `ppl_vs_speed.svg` in `dir`.
pub fn write(rows: &[AblationRow], dir: &Path) -> Result<(), SweepError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let md = format!(
        "# Quantization ablation\n\n{}\n![PPL vs speed](ppl_vs_speed.svg)\n",
        markdown(rows)
    );
    for (name, text) in [
        ("ablation.md", md),
        ("ablation.csv", csv(rows)),
        (
            "ablation.json",
            serde_json::to_string_pretty(rows).unwrap_or_default(),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| err(&path, e))?;
    }
    let path = dir.join("ppl_vs_speed.svg");
    let root = SVGBackend::new(&path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&path, e))?;
    let x_max = rows.iter().map(|r| r.tg_ts).fold(1.0, f64::max) * 1.15;
    let y_min = rows
        .iter()
        .map(|r| r.ppl - r.ppl_err)
        .fold(f64::INFINITY, f64::min);
    let y_max = rows.iter().map(|r| r.ppl + r.ppl_err).fold(0.0, f64::max);
    let pad = ((y_max - y_min) * 0.15).max(0.5);
    let mut chart = ChartBuilder::on(&root)
        .caption("Perplexity against generation speed", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min - pad).max(0.0)..y_max + pad)
        .map_err(|e| err(&path, e))?;
    chart
        .configure_mesh()
        .x_desc("generation tokens/s")
        .y_desc("perplexity (lower is better)")
        .draw()
        .map_err(|e| err(&path, e))?;
    chart
        .draw_series(rows.iter().map(|r| {
            EmptyElement::at((r.tg_ts, r.ppl))
                + Circle::new((0, 0), 4, RGBColor(31, 119, 180).filled())
                + Text::new(
                    format!("{} ({:.1} bpw)", r.weight_type, r.bits_per_weight()),
                    (6, -14),
                    ("sans-serif", 13),
                )
        }))
        .map_err(|e| err(&path, e))?;
    root.present().map_err(|e| err(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablation_is_written_in_every_format() {
        let row = |t: &str, size: u64, ppl: f64, tg: f64| AblationRow {
            model: format!("m-{t}.gguf"),
            weight_type: t.into(),
            size_bytes: size,
            params: 100,
            ppl,
            ppl_err: 0.1,
            pp_ts: 400.0,
            tg_ts: tg,
            prompt_len: 512,
            gen_len: 128,
        };
        let rows = vec![row("Q8_0", 106, 23.5, 180.0), row("Q4_0", 56, 28.8, 200.0)];
        assert!((rows[0].bits_per_weight() - 8.48).abs() < 1e-9);
        let dir = std::env::temp_dir().join(format!("bench-sweep-{}", std::process::id()));
        write(&rows, &dir).unwrap();
        let md = std::fs::read_to_string(dir.join("ablation.md")).unwrap();
        assert!(
            md.contains("| m-Q4_0.gguf | Q4_0 |") && md.contains("pp512") && md.contains("tg128")
        );
        let back: Vec<AblationRow> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("ablation.json")).unwrap())
                .unwrap();
        assert_eq!(back, rows);
        assert_eq!(
            std::fs::read_to_string(dir.join("ablation.csv"))
                .unwrap()
                .lines()
                .count(),
            3
        );
        assert!(std::fs::read_to_string(dir.join("ppl_vs_speed.svg"))
            .unwrap()
            .contains("Q8_0"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
