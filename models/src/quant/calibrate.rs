//! Activation calibrators: each turns what was seen of a tensor into the `amax` of its
//! symmetric int8 range.

use alloc::vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use super::AbsHistogram;

/// How the clipping range of an activation is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Calibrator {
    /// The largest |x| seen: no clipping, coarsest steps.
    MinMax,
    /// The given percentile of |x| (99.99 by default): clips rare outliers.
    Percentile(f32),
    /// TensorRT's entropy calibration: the threshold whose 128-level quantised histogram is
    /// closest (KL divergence) to the clipped original.
    Entropy,
}

impl Default for Calibrator {
    fn default() -> Self {
        Calibrator::Percentile(99.99)
    }
}

impl Calibrator {
    /// `amax` from the largest |x| seen and the histogram of |x| over `[0, max_abs]`.
    pub fn amax(self, max_abs: f32, hist: &AbsHistogram) -> f32 {
        match self {
            Calibrator::MinMax => max_abs,
            Calibrator::Percentile(p) => percentile(hist, p).min(max_abs),
            Calibrator::Entropy => entropy(hist).min(max_abs),
        }
    }

    /// Whether [`Self::amax`] needs the histogram (a second pass over the data).
    pub fn needs_histogram(self) -> bool {
        !matches!(self, Calibrator::MinMax)
    }
}

impl fmt::Display for Calibrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibrator::MinMax => f.write_str("min-max"),
            Calibrator::Percentile(p) => write!(f, "percentile-{p}"),
            Calibrator::Entropy => f.write_str("entropy"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown calibrator {0:?}: use min-max, percentile, percentile-P (0 < P <= 100) or entropy"
)]
pub struct CalibratorParseError(pub alloc::string::String);

impl FromStr for Calibrator {
    type Err = CalibratorParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CalibratorParseError(s.into());
        match s {
            "min-max" | "minmax" => Ok(Calibrator::MinMax),
            "entropy" | "kl" => Ok(Calibrator::Entropy),
            "percentile" => Ok(Calibrator::default()),
            _ => {
                let p: f32 = s
                    .strip_prefix("percentile-")
                    .ok_or_else(err)?
                    .parse()
                    .map_err(|_| err())?;
                if p > 0.0 && p <= 100.0 {
                    Ok(Calibrator::Percentile(p))
                } else {
                    Err(err())
                }
            }
        }
    }
}

/// Upper edge of the bin where the cumulative share first reaches `p` percent.
fn percentile(hist: &AbsHistogram, p: f32) -> f32 {
    let total = hist.total();
    if total == 0 {
        return 0.0;
    }
    let target = (p as f64 / 100.0) * total as f64;
    let mut seen = 0u64;
    for (i, &c) in hist.counts.iter().enumerate() {
        seen += c;
        if seen as f64 >= target {
            return (i + 1) as f32 * hist.bin_width();
        }
    }
    hist.range
}

/// TensorRT's KL search (as in NVIDIA's pytorch-quantization `_compute_amax_entropy`): for each
/// threshold bin `i` from 128 up, clip the histogram at `i` (outliers added to the last kept
/// bin), merge it into 128 levels and spread each level back over its non-empty bins, and keep
/// the `i` with the smallest KL(clipped || quantised).
fn entropy(hist: &AbsHistogram) -> f32 {
    const LEVELS: usize = 128;
    let bins = hist.counts.len();
    if hist.total() == 0 {
        return 0.0;
    }
    if bins <= LEVELS {
        return hist.range;
    }
    let counts: vec::Vec<f64> = hist.counts.iter().map(|&c| c as f64).collect();
    let mut best = (f64::INFINITY, bins);
    let mut merged = vec![0f64; LEVELS];
    let mut nonzero = vec![0usize; LEVELS];
    for i in LEVELS..=bins {
        let outliers: f64 = counts[i..].iter().sum();
        let p_total: f64 = counts[..i].iter().sum::<f64>() + outliers;
        merged.iter_mut().for_each(|m| *m = 0.0);
        nonzero.iter_mut().for_each(|n| *n = 0);
        for (j, &c) in counts[..i].iter().enumerate() {
            let level = j * LEVELS / i;
            merged[level] += c;
            nonzero[level] += (c > 0.0) as usize;
        }
        let q_total: f64 = merged.iter().sum();
        let mut kl = 0f64;
        for (j, &c) in counts[..i].iter().enumerate() {
            let p = if j == i - 1 { c + outliers } else { c };
            if p == 0.0 {
                continue;
            }
            let level = j * LEVELS / i;
            let q = if c > 0.0 {
                merged[level] / nonzero[level] as f64
            } else {
                0.0
            };
            if q == 0.0 {
                kl = f64::INFINITY;
                break;
            }
            let (p, q) = (p / p_total, q / q_total);
            kl += p * libm::log(p / q);
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * hist.bin_width()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn gaussian_with_outliers() -> (Vec<f32>, f32) {
        let mut rng = crate::rng::Rng::new(7);
        let mut v: Vec<f32> = (0..200_000)
            .map(|_| {
                // Box-Muller.
                let (a, b) = (rng.next_f64().max(1e-12), rng.next_f64());
                (libm::sqrt(-2.0 * libm::log(a)) * libm::cos(core::f64::consts::TAU * b)) as f32
            })
            .collect();
        v.extend([40.0, -35.0]);
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        (v, max)
    }

    #[test]
    fn calibrators_clip_outliers_in_the_expected_order() {
        let (v, max) = gaussian_with_outliers();
        let mut h = AbsHistogram::new(AbsHistogram::DEFAULT_BINS, max);
        h.add(&v);
        let minmax = Calibrator::MinMax.amax(max, &h);
        let pct = Calibrator::Percentile(99.99).amax(max, &h);
        let kl = Calibrator::Entropy.amax(max, &h);
        assert_eq!(minmax, 40.0);
        // 99.99% of |N(0,1)| lies below 3.89.
        assert!((3.6..4.3).contains(&pct), "percentile {pct}");
        // The KL threshold of a Gaussian at 8 bits sits a few sigma out, far below the outlier.
        assert!((2.0..6.0).contains(&kl), "entropy {kl}");
    }

    #[test]
    fn parses_the_cli_names() {
        assert_eq!("min-max".parse(), Ok(Calibrator::MinMax));
        assert_eq!("percentile".parse(), Ok(Calibrator::Percentile(99.99)));
        assert_eq!("percentile-99.9".parse(), Ok(Calibrator::Percentile(99.9)));
        assert_eq!("entropy".parse(), Ok(Calibrator::Entropy));
        assert!("percentile-101".parse::<Calibrator>().is_err());
        assert!("median".parse::<Calibrator>().is_err());
        for c in [
            Calibrator::MinMax,
            Calibrator::Percentile(99.9),
            Calibrator::Entropy,
        ] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }
}
