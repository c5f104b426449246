//! Optional TLS for both front ends (rustls): `--tls-cert` and `--tls-key` (PEM)
//! serve gRPC and HTTP over TLS; `--client-ca` also requires every client to
//! present a certificate signed by that CA (mutual TLS), for deployments without
//! a service mesh.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The PEM files of `--tls-cert`, `--tls-key` and `--client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What a server needs to speak TLS, read and checked once at start-up.
pub struct Tls {
    pub files: TlsFiles,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

impl Tls {
    /// Reads the files and checks that they hold what they should.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let cert_pem = read(&files.cert, "TLS certificate (--tls-cert)")?;
        let key_pem = read(&files.key, "TLS private key (--tls-key)")?;
        let ca_pem = files.client_ca.as_ref().map(|p| read(p, "client CA (--client-ca)")).transpose()?;
        let tls = Tls { files, cert_pem, key_pem, ca_pem };
        tls.http_config().context("the TLS files do not make a usable server configuration")?;
        Ok(tls)
    }

    fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not PEM", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no certificate (expected PEM 'BEGIN CERTIFICATE')",
            path.display()
        );
        Ok(certs)
    }

    /// The rustls configuration of the HTTP front end (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn http_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = Self::certificates(&self.cert_pem, &self.files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .with_context(|| format!("{} holds no private key (expected PEM)", self.files.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match (&self.ca_pem, &self.files.client_ca) {
            (Some(ca), Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in Self::certificates(ca, path)? {
                    roots.add(cert).with_context(|| format!("a certificate of {} is not a CA", path.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("building the client-certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).context("the certificate does not match the key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The tonic configuration of the gRPC front end.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}
