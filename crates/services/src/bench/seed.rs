//! `bench seed-matrix`: the seed's four load rows, each driven at its stated rate
//! (open loop: requests are sent on schedule whether or not earlier ones have
//! answered, and latency counts from the scheduled send, so a slow server cannot
//! hide its queueing), printing the achieved rate and p99 against each target:
//!
//! | row | rate | p99 target |
//! |---|---|---|
//! | REST (token validation by a gateway) | 1,000 req/s | 100 ms |
//! | gRPC (`ValidateToken` by a gateway) | 5,000 req/s | 10 ms |
//! | AMQP (the relay, commit → consumer) | 10,000 msg/s | 1 s |
//! | WebSocket (1,000 connections, push from commit) | — | 50 ms |
//!
//! For rates the ratio is achieved / target; for latencies target / p99: above 1
//! meets the row.

use super::{Measurement, Run, Scratch};
use perfect21_domain::password::PasswordCost;
use perfect21_domain::{LoginRequest, Registration, RequestContext};
use std::future::Future;
use std::time::Duration;

/// Calls `call` `rate` times a second for `duration`, each on its own task, on
/// schedule; latencies from the scheduled time. Failed calls are counted, not timed.
pub async fn paced<F, Fut>(rate: f64, duration: Duration, mut call: F) -> anyhow::Result<(Run, usize)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due).await;
        let fut = call();
        tasks.push(tokio::spawn(async move {
            let ok = fut.await.is_ok();
            (ok, due.elapsed().as_secs_f64() * 1e6)
        }));
    }
    let (mut latencies, mut failed) = (Vec::with_capacity(total), 0);
    for t in tasks {
        match t.await? {
            (true, us) => latencies.push(us),
            (false, _) => failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let run = Run {
        per_sec: latencies.len() as f64 / elapsed,
        p50_us: super::percentile(&latencies, 0.5),
        p99_us: super::percentile(&latencies, 0.99),
    };
    Ok((run, failed))
}

const S: &str = "seed-matrix";

fn row(metric_rate: &'static str, metric_p99: &'static str, run: &Run, rate: f64, p99_ms: f64) -> Vec<Measurement> {
    vec![
        Measurement::rate(S, metric_rate, run.per_sec, rate, "req/s"),
        Measurement::latency(S, metric_p99, run.p99_us / 1000.0, p99_ms, "ms"),
    ]
}

async fn rest(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let served = super::oauth::serve(scratch, "seed-rest", PasswordCost::TEST).await?;
    let ctx = RequestContext::service("bench");
    let sa = super::gateway_account(&served.identity, &[("tokens.validate", "perfect21.tokens", "validate")]).await?;
    let reg = Registration {
        email: "seed@example.com".into(),
        username: "seed".into(),
        password: "benchmark password 1".into(),
        ..Default::default()
    };
    served.identity.register(&ctx, reg).await?;
    let login =
        LoginRequest { identifier: "seed".into(), password: "benchmark password 1".into(), ..Default::default() };
    let grant = served.identity.login(&ctx, login).await?;
    served.identity.live().wait_for(grant.position, Duration::from_secs(10)).await?;
    let (service, _) = served.app.service_token(sa.id)?;
    let body = serde_json::json!({ "token": served.app.access_token(&grant)? }).to_string();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let url = format!("http://{}/api/v1/auth/validate", served.addr);
    let (run, failed) = paced(1000.0, duration, || {
        let req = http.post(&url).bearer_auth(&service).header("content-type", "application/json").body(body.clone());
        async move {
            let res = req.send().await?;
            anyhow::ensure!(res.status().is_success(), "answer {}", res.status());
            res.bytes().await?;
            Ok(())
        }
    })
    .await?;
    anyhow::ensure!(failed == 0, "{failed} REST calls failed");
    Ok(row("rest_rate", "rest_p99", &run, 1000.0, 100.0))
}

async fn grpc(scratch: &Scratch, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let bench = super::grpc::setup(scratch).await?;
    let call = super::grpc::validate_call(bench.token.clone(), bench.service.clone());
    let channels = bench.channels.clone();
    let mut next = 0usize;
    let (run, failed) = paced(5000.0, duration, || {
        next += 1;
        call(channels[next % channels.len()].clone())
    })
    .await?;
    anyhow::ensure!(failed == 0, "{failed} gRPC calls failed");
    Ok(row("grpc_rate", "grpc_p99", &run, 5000.0, 10.0))
}

pub async fn matrix(scratch: &Scratch, duration: Duration, amqp: &str) -> anyhow::Result<Vec<Measurement>> {
    let mut rows = rest(scratch, duration).await?;
    rows.extend(grpc(scratch, duration).await?);
    // AMQP: the relay publishes as fast as the broker confirms; the seed asks 10k msg/s
    // with delivery within 1 s.
    let relay = super::relay::relay(scratch, amqp).await?;
    let find = |metric: &str| relay.iter().find(|m| m.metric == metric).map(|m| m.ours).unwrap_or(0.0);
    rows.push(Measurement::rate(S, "amqp_rate", find("events_published"), 10_000.0, "msgs/s"));
    rows.push(Measurement::latency(S, "amqp_p99", find("commit_to_consumer_p99") / 1000.0, 1000.0, "ms"));
    // WebSocket: 1,000 connections (one per user), push latency from commit.
    let ws = super::websocket::websocket_with(scratch, duration, 1).await?;
    let p99 = ws.iter().find(|m| m.metric == "push_with_append_p99").map(|m| m.ours).unwrap_or(0.0);
    rows.push(Measurement::latency(S, "websocket_p99", p99 / 1000.0, 50.0, "ms"));
    Ok(rows)
}
