//! Handles of the counters recorded on every request, registered once when an
//! [`Identity`](crate::Identity) is made instead of looked up by name and labels on
//! every call (`metrics::counter!` allocates the key and searches the registry each
//! time). They belong to the recorder installed at that moment: `perfect21 serve`
//! installs its recorder before it opens the log.

use metrics::Counter;

pub struct Counters {
    /// `perfect21_permission_checks_total`: denied, allowed.
    permission_checks: [Counter; 2],
    /// `perfect21_token_operations_total{operation="validate"}`: invalid, valid.
    token_validations: [Counter; 2],
}

impl Counters {
    pub(crate) fn register() -> Counters {
        let check = |result: &'static str| metrics::counter!("perfect21_permission_checks_total", "result" => result);
        let validation = |outcome: &'static str| metrics::counter!("perfect21_token_operations_total", "operation" => "validate", "outcome" => outcome);
        Counters {
            permission_checks: [check("denied"), check("allowed")],
            token_validations: [validation("invalid"), validation("valid")],
        }
    }

    /// One permission check and its verdict.
    pub fn permission_check(&self, allowed: bool) {
        self.permission_checks[usize::from(allowed)].increment(1);
    }

    /// One validation of an access token and its verdict.
    pub fn token_validation(&self, valid: bool) {
        self.token_validations[usize::from(valid)].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Counters;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn each_verdict_counts_on_its_own_series() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let counters = metrics::with_local_recorder(&recorder, Counters::register);
        counters.permission_check(true);
        counters.permission_check(true);
        counters.permission_check(false);
        counters.token_validation(false);
        let text = recorder.handle().render();
        for line in [
            r#"perfect21_permission_checks_total{result="allowed"} 2"#,
            r#"perfect21_permission_checks_total{result="denied"} 1"#,
            r#"perfect21_token_operations_total{operation="validate",outcome="invalid"} 1"#,
            r#"perfect21_token_operations_total{operation="validate",outcome="valid"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
