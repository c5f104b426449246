//! `perfect21 notify`: the notification service (seed section 3.4).
//!
//! It consumes `notification.user_events` (`user.events.*`),
//! `notification.security_events` (`security.events.*`) and
//! `notification.notification_requests` (`notification.*.*`): durable, 24 h TTL,
//! at most 10 000 messages, prefetch 10. A message that keeps failing after
//! bounded retries goes to `notification.dead_letter` (as do messages the broker
//! drops for TTL or length, through the `notification.dlx` exchange). Every step of a
//! message (email, SMS, push) is remembered by message id, so a redelivery never
//! sends twice; `send_at` is honoured by keeping the message until then.

mod plan;
mod store;
mod templates;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use plan::{Action, SmsText};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::NotifyStore;
use templates::Templates;

/// Attempts of one message before it goes to the dead-letter queue.
const ATTEMPTS: u32 = 3;

/// Options of `perfect21 notify`.
#[derive(clap::Args, Clone)]
pub struct NotifyArgs {
    #[arg(long, env = "PERFECT21_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// SMTP server, `smtp://host:port` (no TLS: a relay on the same network).
    #[arg(long, env = "PERFECT21_SMTP_URL", default_value = "smtp://127.0.0.1:25")]
    pub smtp_url: String,
    /// Sender address of emails.
    #[arg(long, env = "PERFECT21_MAIL_FROM", default_value = "perfect21 <no-reply@perfect21.local>")]
    pub mail_from: String,
    /// HTTP endpoint that sends SMS: receives POST {"to", "message", "message_id"}.
    #[arg(long, env = "PERFECT21_SMS_WEBHOOK")]
    pub sms_webhook: Option<String>,
    /// HTTP endpoint that sends push notifications: receives POST {"user_id", "title", "body", "data", "message_id"}.
    #[arg(long, env = "PERFECT21_PUSH_WEBHOOK")]
    pub push_webhook: Option<String>,
    /// Directory of templates (`<name>.txt`) that replace the built-in ones file by file
    /// (and may add new ones for template emails). Without it, the built-ins are used.
    #[arg(long, env = "PERFECT21_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Write the built-in templates into this directory (for editing) and exit.
    #[arg(long)]
    pub print_templates: Option<PathBuf>,
    /// Public base URL of the REST API, for links in emails.
    #[arg(long, env = "PERFECT21_PUBLIC_URL", default_value = "http://localhost:8080")]
    pub public_url: String,
    /// Data directory (the service's own SQLite file: handled ids, scheduled messages).
    #[arg(long, env = "PERFECT21_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Service name: queues are `<name>.user_events`, `<name>.security_events`,
    /// `<name>.notification_requests` and `<name>.dead_letter`.
    #[arg(long, env = "PERFECT21_NOTIFY_SERVICE", default_value = "notification")]
    pub service_name: String,
    /// HTTP port for health checks.
    #[arg(long, env = "PERFECT21_NOTIFY_ADDR", default_value = "0.0.0.0:8084")]
    pub http_addr: std::net::SocketAddr,
}

struct Notifier {
    args: NotifyArgs,
    templates: Templates,
    store: NotifyStore,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    http: reqwest::Client,
}

fn smtp(url: &str) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let rest =
        url.strip_prefix("smtp://").with_context(|| format!("SMTP URL '{url}' must look like smtp://host:port"))?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "25"));
    let port: u16 = port.trim_end_matches('/').parse().with_context(|| format!("SMTP port in '{url}'"))?;
    Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build())
}

pub async fn run(args: NotifyArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.print_templates {
        for path in templates::write_defaults(dir)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let notifier = Arc::new(Notifier {
        templates: Templates::load(args.templates.as_deref())?,
        store: NotifyStore::open(&args.data_dir.join("notify.db"))?,
        mailer: smtp(&args.smtp_url)?,
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        args,
    });
    let listener = tokio::net::TcpListener::bind(notifier.args.http_addr).await?;
    println!("perfect21 notify listening on {}", listener.local_addr()?);
    let prometheus = perfect21_telemetry::install();
    let health = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/metrics", axum::routing::get(move || async move { prometheus.render() }));
    tokio::spawn(async move { axum::serve(listener, health).await });
    tokio::spawn(schedule_loop(notifier.clone()));
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Err(e) = consume(notifier.clone()).await {
            tracing::warn!(error = %format!("{e:#}"), "notification consumer lost the broker; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn dead_letter_exchange(service: &str) -> String {
    format!("{service}.dlx")
}

fn queue_args(service: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongUInt(86_400_000));
    args.insert("x-max-length".into(), AMQPValue::LongUInt(10_000));
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dead_letter_exchange(service).into()));
    args
}

fn dead_letter_queue(service: &str) -> String {
    format!("{service}.dead_letter")
}

/// Declares the exchanges, the three queues with their bindings, and the dead-letter queue.
async fn declare(ch: &Channel, service: &str) -> anyhow::Result<Vec<String>> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(perfect21_relay::message::EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    let dlx = dead_letter_exchange(service);
    ch.exchange_declare(dlx.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
    let dlq = dead_letter_queue(service);
    ch.queue_declare(dlq.as_str().into(), durable_queue, FieldTable::default()).await?;
    ch.queue_bind(
        dlq.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut queues = Vec::new();
    for (suffix, key) in [
        ("user_events", "user.events.*"),
        ("security_events", "security.events.*"),
        ("notification_requests", "notification.*.*"),
    ] {
        let name = format!("{service}.{suffix}");
        ch.queue_declare(name.as_str().into(), durable_queue, queue_args(service)).await?;
        ch.queue_bind(
            name.as_str().into(),
            perfect21_relay::message::EXCHANGE.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        queues.push(name);
    }
    Ok(queues)
}

async fn consume(notifier: Arc<Notifier>) -> anyhow::Result<()> {
    let conn = Connection::connect(&notifier.args.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(10, BasicQosOptions::default()).await?;
    let service = notifier.args.service_name.clone();
    let queues = declare(&ch, &service).await?;
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(
            ch.basic_consume(
                q.as_str().into(),
                format!("{service}-{q}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?,
        );
    }
    let mut deliveries = futures::stream::select_all(consumers);
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let routing_key = delivery.routing_key.to_string();
        let traceparent = delivery.properties.headers().as_ref().and_then(|h| match h.inner().get("traceparent") {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        });
        let span = tracing::info_span!("notification.handle", routing_key = %routing_key);
        perfect21_telemetry::set_parent(&span, traceparent.as_deref(), None);
        let handled = tracing::Instrument::instrument(notifier.receive(&routing_key, &delivery.data), span).await;
        if let Err(e) = handled {
            // Keeps failing: park it with the reason, so nothing is lost silently.
            let mut headers = FieldTable::default();
            headers.insert("x-error".into(), AMQPValue::LongString(format!("{e:#}").into()));
            headers.insert("x-original-routing-key".into(), AMQPValue::LongString(routing_key.clone().into()));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers)
                .with_content_type(ShortString::from("application/json"));
            let dlq = dead_letter_queue(&service);
            ch.basic_publish("".into(), dlq.as_str().into(), BasicPublishOptions::default(), &delivery.data, props)
                .await?
                .await?;
            tracing::warn!(error = %format!("{e:#}"), routing_key, "message dead-lettered");
            metrics::counter!("perfect21_notifications_total", "channel" => "any", "outcome" => "dead_lettered")
                .increment(1);
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

async fn schedule_loop(notifier: Arc<Notifier>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let due = match notifier.store.due(chrono::Utc::now().timestamp_millis()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read scheduled messages");
                continue;
            }
        };
        for (id, _routing_key, body) in due {
            let result = match serde_json::from_slice::<Value>(&body) {
                Ok(msg) => notifier.handle_with_retries(&id, &msg).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), message_id = id, "scheduled message failed; dropped");
            }
            let _ = notifier.store.unschedule(&id);
        }
    }
}

impl Notifier {
    /// One delivery from the broker: deduplicated, scheduled if `send_at` is ahead, else handled.
    async fn receive(&self, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        let msg: Value = serde_json::from_slice(body).context("the message is not JSON")?;
        let id = plan::message_id(&msg)?.to_string();
        metrics::counter!("perfect21_notifications_total", "channel" => "any", "outcome" => "received").increment(1);
        if self.store.was_handled(&id)? {
            metrics::counter!("perfect21_notifications_total", "channel" => "any", "outcome" => "duplicate")
                .increment(1);
            return Ok(());
        }
        if let Some(at) = plan::send_at(&msg) {
            if at > chrono::Utc::now().timestamp_millis() {
                return self.store.schedule(&id, at, routing_key, body);
            }
        }
        self.handle_with_retries(&id, &msg).await
    }

    async fn handle_with_retries(&self, id: &str, msg: &Value) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.handle(id, msg).await {
                Ok(()) => return self.store.mark_handled(id),
                Err(e) if attempt >= ATTEMPTS => return Err(e.context(format!("after {ATTEMPTS} attempts"))),
                Err(e) => {
                    tracing::info!(error = %format!("{e:#}"), attempt, message_id = id, "notification failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * 3u64.pow(attempt - 1))).await;
                }
            }
        }
    }

    /// Runs `step` unless it already succeeded for this message (so a retry or
    /// redelivery never repeats an email that went out).
    async fn once<F: std::future::Future<Output = anyhow::Result<()>>>(
        &self,
        id: &str,
        step: &str,
        f: F,
    ) -> anyhow::Result<()> {
        let key = format!("{id}:{step}");
        if self.store.was_handled(&key)? {
            return Ok(());
        }
        f.await?;
        self.store.mark_handled(&key)
    }

    async fn handle(&self, id: &str, msg: &Value) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp();
        for action in plan::plan(msg, &self.args.public_url, now)? {
            let step = action.step();
            match action {
                Action::Email { to, template, context, subject } => {
                    self.once(id, step, self.email(&to, &template, &context, subject.as_deref())).await?
                }
                Action::Sms { to, text } => {
                    let text = match text {
                        SmsText::Given(text) => text,
                        SmsText::Template { name, context } => self.templates.render(&name, &context)?.body,
                    };
                    self.once(id, step, self.sms(id, &to, text.trim())).await?
                }
                Action::Push { data } => self.once(id, step, self.push(id, &data)).await?,
            }
        }
        Ok(())
    }

    async fn email(&self, to: &str, template: &str, ctx: &Value, subject: Option<&str>) -> anyhow::Result<()> {
        let rendered = self.templates.render(template, ctx)?;
        let subject = subject.map(String::from).or(rendered.subject).unwrap_or_else(|| "perfect21".into());
        let message = lettre::Message::builder()
            .from(self.args.mail_from.parse().context("mail sender address")?)
            .to(to.parse().with_context(|| format!("recipient address '{to}'"))?)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(rendered.body)?;
        self.mailer.send(message).await.context("sending the email over SMTP")?;
        Ok(())
    }

    async fn sms(&self, id: &str, to: &str, text: &str) -> anyhow::Result<()> {
        let Some(url) = &self.args.sms_webhook else {
            tracing::warn!(message_id = id, "no SMS webhook configured; SMS not sent");
            return Ok(());
        };
        let res = self.http.post(url).json(&json!({"to": to, "message": text, "message_id": id})).send().await?;
        anyhow::ensure!(res.status().is_success(), "SMS webhook answered {}", res.status());
        Ok(())
    }

    async fn push(&self, id: &str, data: &Value) -> anyhow::Result<()> {
        let url = self.args.push_webhook.as_ref().context("no push webhook configured (--push-webhook)")?;
        let body = json!({"user_id": data["user_id"], "title": data["title"], "body": data["body"], "data": data["data"], "message_id": id});
        let res = self.http.post(url).json(&body).send().await?;
        anyhow::ensure!(res.status().is_success(), "push webhook answered {}", res.status());
        Ok(())
    }
}
