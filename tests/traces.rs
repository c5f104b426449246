//! One trace across the AMQP hop: a REST request (continuing the caller's W3C
//! traceparent) → the event it wrote → the relay's publish → the notification
//! service handling the message, and the read models folding the event. Spans are
//! received by an OTLP/HTTP receiver on loopback, exported by the real processes
//! through the standard OTEL_* variables.

mod common;

use common::{amqp_url, Killed};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_rest_the_relay_and_the_notification_service() {
    // The OTLP receiver.
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            sink.lock().unwrap().push(Span {
                                service: service.clone(),
                                name: s.name,
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent: s.parent_span_id,
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = otlp.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(otlp, receiver).await });
    let otel = |cmd: &mut Command, service: &str| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    };

    // An SMTP server, the API with its relay, and the notification service.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _smtp = Killed(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{smtp_port}"), "-c", "aiosmtpd.handlers.Sink"])
            .spawn()
            .expect("aiosmtpd"),
    );
    let exe = env!("CARGO_BIN_EXE_perfect21");
    let mut serve = Command::new(exe);
    serve
        .args(["serve", "--data-dir", &data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--dev", "--insecure-fast-passwords", "--amqp-url", &amqp_url()])
        .stdout(Stdio::piped());
    otel(&mut serve, "perfect21-serve");
    let mut serve = serve.spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(serve.stdout.take().unwrap()));
    let _serve = Killed(serve);
    let _grpc = lines.next().unwrap().unwrap();
    let http = lines.next().unwrap().unwrap().replace("perfect21 HTTP listening on ", "");
    let service = format!("trace-test-{}", uuid::Uuid::new_v4().simple());
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/../../templates/notification");
    let mut notify = Command::new(exe);
    notify
        .args(["notify", "--amqp-url", &amqp_url(), "--service-name", &service, "--templates", templates])
        .args(["--smtp-url", &format!("smtp://127.0.0.1:{smtp_port}"), "--data-dir", &format!("{data}/notify")])
        .args(["--http-addr", "127.0.0.1:0"])
        .stdout(Stdio::null());
    otel(&mut notify, "perfect21-notify");
    let _notify = Killed(notify.spawn().unwrap());
    // Let the notification queues exist before the registration is relayed.
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn
        .create_channel()
        .await
        .unwrap()
        .queue_declare(format!("{service}.user_events").as_str().into(), passive, Default::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "notification queues never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A request that continues a trace the caller started.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/auth/register"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"email": "trace@example.com", "username": "traced", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, publish, handle) = loop {
        let all: Vec<Span> = spans.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
        let request = all.iter().find(|s| s.name == "request" && hex(&s.parent) == caller_span).cloned();
        let publishes: Vec<_> = all.iter().filter(|s| s.name == "relay.publish").cloned().collect();
        let handle = all.iter().find(|s| s.name == "notification.handle").cloned();
        if let (Some(request), Some(handle)) = (request, handle) {
            if let Some(publish) = publishes.iter().find(|p| p.span_id == handle.parent).cloned() {
                break (request, publish, handle);
            }
        }
        assert!(Instant::now() < deadline, "the trace never completed; spans of it so far: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(request.service.contains("perfect21-serve"), "{request:?}");
    let all: Vec<Span> = spans.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
    let command = all.iter().find(|s| s.name == "command").expect("a span for the command");
    assert_eq!(command.parent, request.span_id, "the command runs inside the request");
    let appends: Vec<_> = all.iter().filter(|s| s.name == "append").collect();
    assert!(appends.len() >= 3, "reservations and the registration are appended: {appends:?}");
    assert!(appends.iter().all(|a| a.parent == command.span_id), "appends are children of the command");
    // The read models fold the request's events inside the same trace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spans
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.name == "projection.update" && hex(&s.trace_id) == trace_id && s.parent == request.span_id)
    {
        let folds: Vec<Span> =
            spans.lock().unwrap().iter().filter(|s| s.name == "projection.update").cloned().collect();
        assert!(Instant::now() < deadline, "no fold of the request's events in its trace; folds: {folds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The event records the request's span, so the relay's publish continues from it.
    assert_eq!(publish.parent, request.span_id, "the relay's publish is a child of the request that wrote the event");
    assert!(handle.service.contains("perfect21-notify"), "{handle:?}");
    assert_eq!(handle.parent, publish.span_id, "the notification is handled as a child of the publish, across AMQP");

    let ch = conn.create_channel().await.unwrap();
    for suffix in ["user_events", "security_events", "notification_requests", "dead_letter"] {
        let _ = ch.queue_delete(format!("{service}.{suffix}").as_str().into(), Default::default()).await;
    }
    let _ = ch.exchange_delete(format!("{service}.dlx").as_str().into(), Default::default()).await;
}
