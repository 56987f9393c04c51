//! The providers' own limits, per deployment (`rpm`, `tpm` on a deployment): Sluice sends a
//! deployment no more than its provider allows, so clients never see the provider's 429 for
//! traffic Sluice could have spread or held back. The buckets are the same lock-free ones as
//! the key limits, shared by every worker and kept across config reloads while a
//! deployment's label and limits are unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::Config;
use sluice_core::limits::TokenBucket;

/// One deployment's limits.
pub struct DeploymentLimit {
    label: String,
    rpm: Option<u32>,
    tpm: Option<u64>,
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

impl DeploymentLimit {
    fn new(label: &str, rpm: Option<u32>, tpm: Option<u64>) -> Self {
        DeploymentLimit {
            label: label.to_string(),
            rpm,
            tpm,
            requests: rpm.map(|n| TokenBucket::per_minute(u64::from(n))),
            tokens: tpm.map(TokenBucket::per_minute),
        }
    }

    /// Takes one request and `tokens` tokens, all or nothing; on refusal, how long until it
    /// could succeed (`None`: never, the request is larger than the token limit).
    pub fn take(&self, tokens: u64, now_ms: u64) -> Result<(), Option<Duration>> {
        let wait = |ms: u64| (ms != u64::MAX).then(|| Duration::from_millis(ms));
        if let Some(r) = &self.requests {
            r.try_take(1, now_ms).map_err(|e| wait(e.0))?;
        }
        if let Some(t) = &self.tokens {
            if let Err(e) = t.try_take(tokens, now_ms) {
                if let Some(r) = &self.requests {
                    r.refund(1, now_ms);
                }
                return Err(wait(e.0));
            }
        }
        Ok(())
    }

    /// Gives back a taken request and its tokens (it was never sent).
    pub fn release(&self, tokens: u64, now_ms: u64) {
        if let Some(r) = &self.requests {
            r.refund(1, now_ms);
        }
        if let Some(t) = &self.tokens {
            t.refund(tokens, now_ms);
        }
    }

    /// Settles a taken request with the tokens it really used.
    pub fn settle(&self, reserved: u64, actual: u64, now_ms: u64) {
        if let Some(t) = &self.tokens {
            t.settle(reserved, actual, now_ms);
        }
    }
}

/// Every deployment's limits, by model group and deployment index.
#[derive(Default)]
pub struct ProviderLimits {
    by_group: Vec<Vec<Option<Arc<DeploymentLimit>>>>,
}

impl ProviderLimits {
    /// The limits of `config`'s deployments, reusing `previous` ones whose label and limits
    /// are unchanged (so a reload keeps what was already spent).
    pub fn build(config: &Config, previous: Option<&ProviderLimits>) -> Self {
        let mut old: HashMap<&str, &Arc<DeploymentLimit>> = HashMap::new();
        for limit in previous
            .into_iter()
            .flat_map(|p| p.by_group.iter().flatten().flatten())
        {
            old.insert(limit.label.as_str(), limit);
        }
        let by_group = config
            .models
            .iter()
            .map(|g| {
                g.deployments
                    .iter()
                    .map(|d| {
                        if d.rpm.is_none() && d.tpm.is_none() {
                            return None;
                        }
                        match old.get(d.label.as_str()) {
                            Some(l) if l.rpm == d.rpm && l.tpm == d.tpm => Some(Arc::clone(l)),
                            _ => Some(Arc::new(DeploymentLimit::new(&d.label, d.rpm, d.tpm))),
                        }
                    })
                    .collect()
            })
            .collect();
        ProviderLimits { by_group }
    }

    /// The limits of deployment `i` of group `g`, if it has any.
    pub fn get(&self, g: usize, i: usize) -> Option<&Arc<DeploymentLimit>> {
        self.by_group.get(g)?.get(i)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_nothing_and_reused_across_builds() {
        let limit = DeploymentLimit::new("p/m", Some(2), Some(100));
        assert!(limit.take(60, 0).is_ok());
        // Tokens refuse: the request slot is given back.
        assert!(limit.take(60, 0).is_err());
        assert!(limit.take(40, 0).is_ok());
        assert!(limit.take(1, 0).is_err(), "two requests per minute");
        let fresh = DeploymentLimit::new("p/m", Some(2), Some(100));
        assert_eq!(
            fresh.take(1_000, 0),
            Err(None),
            "larger than the bucket: never"
        );
        assert!(
            fresh.take(100, 0).is_ok(),
            "the refused take gave its request back"
        );
        let text = "[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ndeployments = [{ provider = \"p\", model = \"m\", rpm = 2 }]\n";
        let cfg = Config::from_toml(text, &HashMap::new()).unwrap();
        let a = ProviderLimits::build(&cfg, None);
        let b = ProviderLimits::build(&cfg, Some(&a));
        assert!(Arc::ptr_eq(a.get(0, 0).unwrap(), b.get(0, 0).unwrap()));
        assert!(a.get(0, 1).is_none());
    }
}
