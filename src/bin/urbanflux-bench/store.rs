//! HTTP to VictoriaMetrics (force_flush, counts of points) and to the daemon's ops endpoint
//! (/readyz, /metrics). Loopback only.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Bound of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Http> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Http { client })
    }

    async fn get(&self, url: &str, query: &[(&str, String)]) -> Result<String> {
        let response = self.client.get(url).query(query).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        Ok(text)
    }

    /// Makes every point VictoriaMetrics has received searchable now.
    pub async fn force_flush(&self, vm: u16) -> Result<()> {
        self.get(&format!("http://127.0.0.1:{vm}/internal/force_flush"), &[])
            .await
            .map(drop)
    }

    /// Samples of `selector` with a timestamp in (at - window, at].
    pub async fn count(&self, vm: u16, selector: &str, at_ms: i64, window_ms: i64) -> Result<u64> {
        let query = format!("sum(count_over_time({selector}[{window_ms}ms]))");
        let text = self
            .get(
                &format!("http://127.0.0.1:{vm}/api/v1/query"),
                &[
                    ("query", query),
                    ("time", format!("{:.3}", at_ms as f64 / 1000.0)),
                    ("nocache", "1".into()),
                ],
            )
            .await?;
        let json: Value = serde_json::from_str(&text)?;
        Ok(json["data"]["result"]
            .get(0)
            .and_then(|r| r["value"][1].as_str())
            .map_or(Ok(0.0), str::parse::<f64>)? as u64)
    }

    /// For each step of `step_ms` ending in (start_ms, end_ms], the samples with a timestamp
    /// in that step: (end of the step in ms, count).
    pub async fn counts_per_step(
        &self,
        vm: u16,
        selector: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, u64)>> {
        let query = format!("sum(count_over_time({selector}[{step_ms}ms]))");
        let text = self
            .get(
                &format!("http://127.0.0.1:{vm}/api/v1/query_range"),
                &[
                    ("query", query),
                    ("start", format!("{:.3}", start_ms as f64 / 1000.0)),
                    ("end", format!("{:.3}", end_ms as f64 / 1000.0)),
                    ("step", format!("{step_ms}ms")),
                    ("nocache", "1".into()),
                ],
            )
            .await?;
        let json: Value = serde_json::from_str(&text)?;
        let Some(values) = json["data"]["result"].get(0).map(|r| &r["values"]) else {
            return Ok(Vec::new());
        };
        values
            .as_array()
            .context("query_range: no values")?
            .iter()
            .map(|v| {
                let at = v[0].as_f64().context("query_range: no time")?;
                let n: f64 = v[1].as_str().context("query_range: no value")?.parse()?;
                Ok(((at * 1000.0).round() as i64, n as u64))
            })
            .collect()
    }

    /// Waits for the daemon's /readyz to answer 200 (connected and subscribed).
    pub async fn wait_ready(&self, ops: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("http://127.0.0.1:{ops}/readyz");
            if let Ok(r) = self.client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("urbanflux not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum over all label sets of a counter on the daemon's /metrics.
    pub async fn metric_sum(&self, ops: u16, name: &str) -> Result<f64> {
        let text = self
            .get(&format!("http://127.0.0.1:{ops}/metrics"), &[])
            .await?;
        let mut sum = 0.0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if rest.starts_with('{') || rest.starts_with(' ') {
                if let Some(v) = rest.rsplit(' ').next() {
                    sum += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        Ok(sum)
    }
}
