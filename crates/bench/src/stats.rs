//! Summary statistics of latency samples.

use serde::{Deserialize, Serialize};

/// Mean and percentiles of a set of samples (in the samples' unit); NaN when there
/// were none (written as JSON `null`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p90: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p95: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p99: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The value below which a fraction `q` of the sorted samples lie (linear interpolation
/// between closest ranks, as numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

impl Stats {
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Stats {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Stats {
                mean: f64::NAN,
                median: f64::NAN,
                p90: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                ..Default::default()
            };
        }
        Stats {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            median: percentile(&v, 0.5),
            p90: percentile(&v, 0.9),
            p95: percentile(&v, 0.95),
            p99: percentile(&v, 0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let s = Stats::of((1..=101).map(|x| x as f64));
        assert_eq!((s.median, s.p90, s.p99, s.mean), (51.0, 91.0, 100.0, 51.0));
        let two = Stats::of([0.0, 10.0]);
        assert_eq!(two.p90, 9.0);
        assert!(Stats::of([]).median.is_nan());
        assert_eq!(Stats::of([f64::NAN, 2.0]).count, 1);
        let empty: Stats =
            serde_json::from_str(&serde_json::to_string(&Stats::of([])).unwrap()).unwrap();
        assert!(empty.p99.is_nan());
    }
}
