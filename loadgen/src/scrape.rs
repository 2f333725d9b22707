//! What a service's `/metrics` (Prometheus text) says, scraped before and after a run: how
//! many times something happened in between, how long it took on average, and what share
//! of it was within a histogram bucket.

/// One scrape of a service's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// `(metric name, labels as written between the braces, value)`.
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    /// `GET {base}/metrics`; `None` when the service does not answer with metrics.
    pub async fn of(http: &reqwest::Client, base: &str) -> Option<Scrape> {
        let r = http.get(format!("{base}/metrics")).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        Some(Scrape::parse(&r.text().await.ok()?))
    }

    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (head, value) = l.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let (name, labels) = match head.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}')?),
                    None => (head, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Scrape { samples }
    }

    /// The sum of every sample of `metric` whose labels contain each of `with` (`key="value"`),
    /// over every other label set; `None` when there is none.
    pub fn sum(&self, metric: &str, with: &[&str]) -> Option<f64> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(name, labels, _)| name == metric && with.iter().all(|w| labels.split(',').any(|l| l == *w)))
            .map(|(_, _, v)| *v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// What a histogram gained between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gained {
    pub count: f64,
    pub sum: f64,
}

impl Gained {
    /// `histogram` (`_count` and `_sum`) between `before` and `after`, label sets filtered by
    /// `with`; `None` when nothing was recorded in between.
    pub fn of(before: &Scrape, after: &Scrape, histogram: &str, with: &[&str]) -> Option<Gained> {
        let delta = |suffix: &str| {
            let metric = format!("{histogram}{suffix}");
            after
                .sum(&metric, with)
                .map(|a| a - before.sum(&metric, with).unwrap_or(0.0))
        };
        let (count, sum) = (delta("_count")?, delta("_sum")?);
        (count > 0.0).then_some(Gained { count, sum })
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }
}

/// The share of what `histogram` recorded between the scrapes that was above `le` (one of its
/// bucket bounds, as written: `"0.05"`).
pub fn share_above(before: &Scrape, after: &Scrape, histogram: &str, le: &str) -> Option<f64> {
    let gained = Gained::of(before, after, histogram, &[])?;
    let bucket = format!("{histogram}_bucket");
    let le = format!("le=\"{le}\"");
    let within = after.sum(&bucket, &[&le])? - before.sum(&bucket, &[&le]).unwrap_or(0.0);
    Some(((gained.count - within) / gained.count).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_every_label_set_of_the_metric_only() {
        let text = "# HELP x\n\
                    surge_store_lock_wait_seconds_sum{kind=\"lane\"} 1.5\n\
                    surge_store_lock_wait_seconds_sum{kind=\"slow\"} 0.25\n\
                    surge_store_lock_wait_seconds_count 7\n\
                    surge_store_lock_wait_seconds_sum_other 9\n";
        let s = Scrape::parse(text);
        assert_eq!(s.sum("surge_store_lock_wait_seconds_sum", &[]), Some(1.75));
        assert_eq!(
            s.sum("surge_store_lock_wait_seconds_sum", &["kind=\"slow\""]),
            Some(0.25)
        );
        assert_eq!(s.sum("surge_store_lock_wait_seconds_count", &[]), Some(7.0));
        assert_eq!(s.sum("other", &[]), None);
    }

    #[test]
    fn a_histogram_between_two_scrapes() {
        let before = Scrape::parse(
            "h_bucket{p=\"a\",le=\"0.05\"} 8\nh_bucket{p=\"a\",le=\"+Inf\"} 10\nh_sum{p=\"a\"} 0.5\nh_count{p=\"a\"} 10\n",
        );
        let after = Scrape::parse(
            "h_bucket{p=\"a\",le=\"0.05\"} 14\nh_bucket{p=\"a\",le=\"+Inf\"} 20\nh_sum{p=\"a\"} 1.5\nh_count{p=\"a\"} 20\n",
        );
        let g = Gained::of(&before, &after, "h", &["p=\"a\""]).expect("gained");
        assert_eq!(g, Gained { count: 10.0, sum: 1.0 });
        assert!((g.mean() - 0.1).abs() < 1e-9);
        assert_eq!(share_above(&before, &after, "h", "0.05"), Some(0.4));
        assert_eq!(
            Gained::of(&before, &before, "h", &[]),
            None,
            "nothing recorded in between"
        );
        assert_eq!(Gained::of(&Scrape::default(), &after, "h", &["p=\"b\""]), None);
    }
}
