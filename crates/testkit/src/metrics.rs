//! Reading a value back from a Prometheus text exposition (`/metrics`).

/// The value of `series` in `metrics`, the series written as it appears before its value
/// (`name{label="value"}`); `None` when it is not there or is not a number.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_value_is_read_and_a_longer_name_is_not_taken_for_it() {
        let text = "# TYPE x histogram\nx_sum{step=\"a\"} 0.25\nx_sum{step=\"ab\"} 7\nx_count 3\n";
        assert_eq!(metric_value(text, "x_sum{step=\"a\"}"), Some(0.25));
        assert_eq!(metric_value(text, "x_count"), Some(3.0));
        assert_eq!(metric_value(text, "x_sum{step=\"b\"}"), None);
        assert_eq!(metric_value(text, "x"), None);
    }
}
