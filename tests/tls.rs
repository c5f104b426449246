//! TLS and mutual TLS on both front ends: with `--tls-cert/--tls-key/--client-ca`
//! a client presenting a certificate of the CA gets answers over gRPC and HTTPS;
//! one without a certificate, or speaking plain text, gets nothing.

mod common;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in PEM files.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "perfect21 test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["gateway.internal".to_string()]).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "gateway");
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    Pki { ca_pem: ca.pem(), client_cert: client.pem(), client_key: client_key.serialize_pem(), dir }
}

fn tls_client(pki: &Pki, with_certificate: bool) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::pem::PemObject::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_certificate {
        let certs = vec![rustls::pki_types::pem::PemObject::from_pem_slice(pki.client_cert.as_bytes()).unwrap()];
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(pki.client_key.as_bytes()).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET path` over HTTPS/1.1: the whole answer, or the error that stopped it.
async fn https_get(connector: &tokio_rustls::TlsConnector, addr: &str, path: &str) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_grpc_and_https() {
    let pki = pki();
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    let server = common::serve::start_with(&["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca]);
    let http_addr = server.http.trim_start_matches("http://").to_string();
    let grpc_addr = server.grpc.trim_start_matches("http://").to_string();

    // HTTPS with a client certificate: answered.
    let answer = https_get(&tls_client(&pki, true), &http_addr, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Without one: the handshake (or the first read) fails.
    let refused = https_get(&tls_client(&pki, false), &http_addr, "/healthz").await;
    assert!(
        refused.as_ref().map_or(true, |a| !a.contains("200 OK")),
        "answered without a client certificate: {refused:?}"
    );
    // Plain HTTP: no answer.
    let plain = reqwest::Client::new().get(format!("http://{http_addr}/healthz")).send().await;
    assert!(plain.map_or(true, |r| !r.status().is_success()), "answered over plain HTTP");

    // gRPC with a client certificate: health answers.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .identity(tonic::transport::Identity::from_pem(&pki.client_cert, &pki.client_key))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{grpc_addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(r.get_ref().status, 1);
    // Without a client certificate: no call gets through.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let attempt = async {
        let channel = tonic::transport::Channel::from_shared(format!("https://{grpc_addr}"))
            .ok()?
            .tls_config(tls)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()
    };
    assert!(attempt.await.is_none(), "gRPC answered without a client certificate");
}

#[test]
fn a_certificate_without_its_key_is_refused_at_start_up() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = common::serve::perfect21()
        .args(["serve", "--data-dir", dir.path().to_str().unwrap(), "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("ca.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private key") && err.contains("ca.pem"), "{err}");
}
