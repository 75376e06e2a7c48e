//! Reading a Prometheus text exposition the way the tests and benchmarks need it: the
//! series by name, a metric summed over its label sets, and a histogram's quantiles,
//! interpolated inside the bucket like PromQL's `histogram_quantile`.

use std::collections::BTreeMap;

/// Parses the Prometheus text format into `series -> value` (`name{labels}` as exported).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of metric `name` (all label sets; 0 when absent).
pub fn sum(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    series
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Quantile `q` of histogram `name` (all label sets together); `None` when it observed
/// nothing.
pub fn quantile(series: &BTreeMap<String, f64>, name: &str, q: f64) -> Option<f64> {
    quantile_of(&buckets(series, name), q)
}

/// Quantile `q` of what histogram `name` observed between two scrapes.
pub fn quantile_since(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let old = buckets(before, name);
    let delta: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .map(|(le, count)| {
            let was = old.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, count - was)
        })
        .collect();
    quantile_of(&delta, q)
}

/// The cumulative buckets `(le, count)` of histogram `name`, by `le`.
fn buckets(series: &BTreeMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = series
        .iter()
        .filter(|(s, _)| s.starts_with(&prefix))
        .filter_map(|(s, count)| {
            let le = s.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = count - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP h a histogram\n# TYPE h histogram\n\
        h_bucket{le=\"1\"} 10\nh_bucket{le=\"2\"} 30\nh_bucket{le=\"+Inf\"} 40\n\
        h_sum 5\nh_count 40\n\
        c{pipeline=\"a b\"} 2\nc{pipeline=\"x\"} 3\nc_total 100\n";

    #[test]
    fn a_metric_is_summed_over_its_label_sets_and_no_other_name() {
        let m = parse_metrics(TEXT);
        assert_eq!(sum(&m, "c"), 5.0);
        assert_eq!(sum(&m, "h_count"), 40.0);
        assert_eq!(sum(&m, "absent"), 0.0);
    }

    #[test]
    fn a_quantile_is_interpolated_inside_its_bucket() {
        let m = parse_metrics(TEXT);
        assert_eq!(quantile(&m, "h", 0.25), Some(1.0));
        assert_eq!(quantile(&m, "h", 0.5), Some(1.5));
        // Past the last finite bucket: its upper bound, as PromQL answers.
        assert_eq!(quantile(&m, "h", 0.99), Some(2.0));
        assert_eq!(quantile(&m, "absent", 0.5), None);
    }

    #[test]
    fn a_quantile_since_sees_only_the_observations_in_between() {
        let before = parse_metrics(TEXT);
        let after = parse_metrics(
            &TEXT
                .replace("le=\"2\"} 30", "le=\"2\"} 50")
                .replace("le=\"+Inf\"} 40", "le=\"+Inf\"} 60"),
        );
        assert_eq!(quantile_since(&before, &after, "h", 0.5), Some(1.5));
        assert_eq!(quantile_since(&before, &before, "h", 0.5), None);
    }
}
