//! Access tokens: EdDSA (Ed25519) JWTs with a key id, a key set that rotates
//! without invalidating live tokens, and its JWKS.
//!
//! Keys live in `<data-dir>/keys/jwt-<unix microseconds>-<kid>.p8` (PKCS#8). The newest
//! signs; every key in the directory verifies, so a rotation (a new file) keeps
//! tokens signed by the older key valid until they expire. Replicas share the
//! directory (or a mounted secret) to share keys.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use uuid::Uuid;

pub const ISSUER: &str = "perfect21";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// Role ids at issue time (current roles and permissions come from the read models).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Set on tokens of the client-credentials grant: the service account's client id
    /// (then `sub` is the service account and `sid` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Claims {
    pub fn user_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn session_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sid).ok()
    }
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// base64url public key (JWK `x`).
    x: String,
}

/// Signing and verifying keys.
pub struct KeySet {
    /// Newest last; the last one signs.
    keys: Vec<Key>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token was signed by an unknown key '{0}'")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

fn kid_of(public: &[u8]) -> String {
    Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl KeySet {
    /// Loads every key in `dir`, creating one if there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating key directory {}", dir.display()))?;
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("jwt-") && n.ends_with(".p8"))
            })
            .collect();
        if files.is_empty() {
            files.push(Self::rotate(dir)?);
        }
        files.sort();
        let keys = files
            .iter()
            .map(|p| {
                let der = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let signing = SigningKey::from_pkcs8_der(&der).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                Ok(Self::key(&signing))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KeySet { keys })
    }

    /// How many signing keys `dir` holds (creating nothing).
    pub fn count(dir: &Path) -> anyhow::Result<usize> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading key directory {}", dir.display()))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("jwt-") && n.ends_with(".p8")))
            .count())
    }

    /// Writes a new signing key into `dir`; returns its path. Older keys keep verifying.
    pub fn rotate(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding key: {e}"))?;
        let kid = kid_of(signing.verifying_key().as_bytes());
        let path = dir.join(format!("jwt-{:017}-{kid}.p8", chrono::Utc::now().timestamp_micros()));
        write_private(&path, der.as_bytes())?;
        Ok(path)
    }

    fn key(signing: &SigningKey) -> Key {
        let public = signing.verifying_key().to_bytes();
        let x = URL_SAFE_NO_PAD.encode(public);
        let der = signing.to_pkcs8_der().expect("ed25519 key encodes");
        Key {
            kid: kid_of(&public),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_components(&x).expect("valid public key"),
            x,
        }
    }

    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let key = self.keys.last().expect("at least one key");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Verifies signature, issuer and (unless `allow_expired`) expiry.
    pub fn verify(&self, token: &str, allow_expired: bool) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed(format!("algorithm {:?}, expected EdDSA", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| TokenError::Malformed("no key id (kid)".into()))?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey(kid))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.validate_exp = !allow_expired;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(e.to_string()),
            }
        })
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .rev()
            .map(|k| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": "EdDSA", "use": "sig"}))
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The server's 32-byte secret (seals TOTP secrets, derives verification tokens):
/// `<keys>/secret.key`, created on first start. Every replica needs the same one.
pub fn load_or_create_secret(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join("secret.key");
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        write_private(&path, &key)?;
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: Uuid::now_v7().to_string(),
            sid: Uuid::now_v7().to_string(),
            jti: "j".into(),
            iat: now,
            exp: now + exp_in,
            iss: ISSUER.into(),
            roles: vec![],
            client_id: None,
        }
    }

    #[test]
    fn rotation_keeps_live_tokens_valid_and_jwks_lists_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let before = KeySet::load_or_create(dir.path()).unwrap();
        let old = before.sign(&claims(600)).unwrap();
        KeySet::rotate(dir.path()).unwrap();
        let after = KeySet::load_or_create(dir.path()).unwrap();
        assert_eq!(after.verify(&old, false).unwrap().jti, "j", "a token of the old key stays valid");
        let new = after.sign(&claims(600)).unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_ne!(kid(&old), kid(&new), "the newest key signs");
        assert!(matches!(before.verify(&new, false), Err(TokenError::UnknownKey(_))));
        let jwks = after.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        assert_eq!(jwks["keys"][0]["kid"], kid(&new));
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let keys = KeySet::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let expired = keys.sign(&claims(-10)).unwrap();
        assert!(matches!(keys.verify(&expired, false), Err(TokenError::Expired)));
        assert!(keys.verify(&expired, true).is_ok(), "revocation accepts expired tokens");
        let good = keys.sign(&claims(600)).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let other = keys.sign(&Claims { sub: Uuid::nil().to_string(), ..claims(600) }).unwrap();
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(matches!(keys.verify(&parts.join("."), false), Err(TokenError::BadSignature)));
        assert!(matches!(keys.verify("not a token", false), Err(TokenError::Malformed(_))));
        let foreign = KeySet::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(matches!(foreign.verify(&good, false), Err(TokenError::UnknownKey(_))));
    }
}
