//! The statistics of the paired mode: a median with a distribution-free 95 % interval, and a
//! target judged on it (met at the median; settled when the whole interval is on one side).

use serde::Serialize;

use super::super::measure::percentile;

/// A median with a distribution-free 95 % confidence interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Median {
    /// The median.
    pub(crate) median: f64,
    /// Lower end of the interval.
    pub(crate) ci95_low: f64,
    /// Upper end of the interval.
    pub(crate) ci95_high: f64,
}

/// The median of `values` and the interval `[x(k), x(n+1-k)]` (1-based order statistics)
/// with the largest `k` such that a Binomial(n, 1/2) falls below `k` with probability at most
/// 2.5 %; for fewer than 6 values no such `k` exists and the interval is the whole range.
pub(crate) fn median_ci95(values: &[f64]) -> Median {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Median {
            median: 0.0,
            ci95_low: 0.0,
            ci95_high: 0.0,
        };
    }
    // P(X < k) for X ~ Binomial(n, 1/2), by summing the probabilities in log space.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let (mut ln_choose, mut below, mut k) = (0.0f64, 0.0f64, 0usize);
    loop {
        // below = P(X <= k - 1) = P(X < k); add P(X = k) to test k + 1.
        let next = below + (ln_choose + ln_half_n).exp();
        if next > 0.025 || k + 1 > n / 2 {
            break;
        }
        below = next;
        k += 1;
        ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
    }
    let (low, high) = if k == 0 {
        (sorted[0], sorted[n - 1])
    } else {
        (sorted[k - 1], sorted[n - k])
    };
    Median {
        median: percentile(&sorted, 50.0),
        ci95_low: low,
        ci95_high: high,
    }
}

/// One single-stream target, judged on the median of the pairs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairedTarget {
    /// What is compared.
    pub(crate) name: String,
    /// The median over the pairs, with its interval.
    pub(crate) measured: Median,
    /// The bound it must meet.
    pub(crate) bound: f64,
    /// `>=` or `<=`.
    pub(crate) relation: &'static str,
    /// Whether the median meets it.
    pub(crate) met: bool,
    /// Whether the whole interval lies on one side of the bound (so that the verdict does
    /// not hang on noise).
    pub(crate) settled: bool,
}

impl PairedTarget {
    pub(crate) fn new(name: &str, measured: Median, bound: f64, at_least: bool) -> Self {
        let (met, settled) = if at_least {
            (
                measured.median >= bound,
                measured.ci95_low >= bound || measured.ci95_high < bound,
            )
        } else {
            (
                measured.median <= bound,
                measured.ci95_high <= bound || measured.ci95_low > bound,
            )
        };
        Self {
            name: name.to_owned(),
            measured,
            bound,
            relation: if at_least { ">=" } else { "<=" },
            met,
            settled,
        }
    }
}

impl Median {
    /// One line of a report: the median and its interval, `digits` after the point.
    pub(crate) fn render_row(&self, name: &str, digits: usize) -> String {
        format!(
            "  {name:<42} {:>9.*}   95 % interval {:.*} to {:.*}\n",
            digits, self.median, digits, self.ci95_low, digits, self.ci95_high
        )
    }
}

impl PairedTarget {
    /// One line of a report: the verdict, and whether the interval settles it.
    pub(crate) fn render(&self) -> String {
        format!(
            "  [{}] {}: {:.3} (needs {} {}){}\n",
            if self.met { "met" } else { "MISSED" },
            self.name,
            self.measured.median,
            self.relation,
            self.bound,
            if self.settled {
                ""
            } else {
                "; the 95 % interval straddles the bound: more pairs needed"
            }
        )
    }
}

/// The medians of two figures (`a`, `b`) of the items of each pass (session), in pass order.
pub(crate) fn medians_by_pass<T>(
    items: &[T],
    pass: fn(&T) -> usize,
    a: fn(&T) -> f64,
    b: fn(&T) -> f64,
) -> Vec<(f64, f64)> {
    let passes = items.iter().map(|t| pass(t) + 1).max().unwrap_or(0);
    (0..passes)
        .map(|p| {
            let of = |f: fn(&T) -> f64| {
                let v: Vec<f64> = items.iter().filter(|t| pass(t) == p).map(f).collect();
                percentile(&v, 50.0)
            };
            (of(a), of(b))
        })
        .collect()
}

/// The report's line of the medians by session (`a_name` then `b_name`); empty when none.
pub(crate) fn render_by_pass(by_pass: &[(f64, f64)], a_name: &str, b_name: &str) -> String {
    if by_pass.is_empty() {
        return String::new();
    }
    let list = |f: fn(&(f64, f64)) -> f64, digits: usize| {
        by_pass
            .iter()
            .map(|p| format!("{:.*}", digits, f(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "  {:<42} {a_name} {}; {b_name} {}\n",
        "medians by session (worker first in 1, 3, ...)",
        list(|p| p.0, 3),
        list(|p| p.1, 2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_follows_the_binomial() {
        // Fewer than 6 values: no order statistic gives 95 %, so the whole range.
        let m = median_ci95(&[3.0, 1.0, 2.0]);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (2.0, 1.0, 3.0));
        // n = 6: P(X < 1) = 1/64 <= 2.5 %, P(X < 2) = 7/64 > 2.5 %: k = 1, the range.
        let six: Vec<f64> = (1..=6).map(f64::from).collect();
        let m = median_ci95(&six);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (3.5, 1.0, 6.0));
        // n = 20: the textbook interval is x(6) to x(15).
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let m = median_ci95(&twenty);
        assert_eq!((m.median, m.ci95_low, m.ci95_high), (10.5, 6.0, 15.0));
        // n = 100: x(40) to x(61).
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let m = median_ci95(&hundred);
        assert_eq!((m.ci95_low, m.ci95_high), (40.0, 61.0));
        assert_eq!(median_ci95(&[]).median, 0.0);
    }

    #[test]
    fn a_verdict_within_the_noise_is_not_settled() {
        let m = Median {
            median: 1.0,
            ci95_low: 0.97,
            ci95_high: 1.02,
        };
        let t = PairedTarget::new("x", m, 0.99, true);
        assert!(t.met && !t.settled);
        let t = PairedTarget::new("x", m, 0.96, true);
        assert!(t.met && t.settled);
    }
}
