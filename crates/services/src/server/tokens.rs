//! Access tokens: EdDSA (Ed25519) JWTs with a key id; OpenID Connect ID tokens
//! signed RS256, ES256 or EdDSA; a key set that rotates without invalidating live
//! tokens, and its JWKS.
//!
//! Keys live in `<data-dir>/keys/{jwt,rs256,es256}-<unix microseconds>-<kid>.p8`
//! (PKCS#8). The newest of each algorithm signs; every key in the directory
//! verifies, so a rotation (new files) keeps tokens signed by older keys valid
//! until they expire. Replicas share the directory (or a mounted secret) to share keys.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;

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
    /// Set on tokens issued to an OpenID Connect client: its client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Scopes granted to that client, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
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
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK (with `kid`, `alg` and `use`).
    jwk: serde_json::Value,
}

/// Signing and verifying keys: Ed25519 for access tokens; Ed25519, RSA (RS256) and
/// P-256 (ES256) for OpenID Connect ID tokens, as each client asks.
pub struct KeySet {
    /// Newest last per algorithm; the newest of an algorithm signs.
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

/// The `typ` header of access tokens (RFC 9068). ID tokens carry `JWT`, so one is
/// never mistaken for the other.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The kinds of key files: (file name prefix, algorithm).
const KINDS: [(&str, Algorithm); 3] =
    [("jwt-", Algorithm::EdDSA), ("rs256-", Algorithm::RS256), ("es256-", Algorithm::ES256)];

fn key_files(dir: &Path, prefix: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading key directory {}", dir.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".p8")))
        .collect();
    files.sort();
    Ok(files)
}

impl KeySet {
    /// Loads every key in `dir`, creating one of each algorithm that has none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating key directory {}", dir.display()))?;
        let mut keys = Vec::new();
        for (prefix, alg) in KINDS {
            let mut files = key_files(dir, prefix)?;
            if files.is_empty() {
                files.push(Self::create(dir, alg)?);
            }
            for p in files {
                let der = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                keys.push(Self::key(alg, &der).with_context(|| format!("loading the key {}", p.display()))?);
            }
        }
        Ok(KeySet { keys })
    }

    /// How many access-token signing keys `dir` holds (creating nothing).
    pub fn count(dir: &Path) -> anyhow::Result<usize> {
        Ok(key_files(dir, "jwt-")?.len())
    }

    /// Writes a new key of every algorithm into `dir`; returns the path of the new
    /// access-token key. Older keys keep verifying.
    pub fn rotate(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        Self::create(dir, Algorithm::RS256)?;
        Self::create(dir, Algorithm::ES256)?;
        Self::create(dir, Algorithm::EdDSA)
    }

    fn create(dir: &Path, alg: Algorithm) -> anyhow::Result<std::path::PathBuf> {
        use rsa::pkcs8::EncodePrivateKey as _;
        let (prefix, der) = match alg {
            Algorithm::RS256 => {
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
                ("rs256-", key.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding key: {e}"))?.as_bytes().to_vec())
            }
            Algorithm::ES256 => {
                let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
                ("es256-", key.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding key: {e}"))?.as_bytes().to_vec())
            }
            _ => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                ("jwt-", key.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding key: {e}"))?.as_bytes().to_vec())
            }
        };
        let kid = Self::key(alg, &der)?.kid;
        let path = dir.join(format!("{prefix}{:017}-{kid}.p8", chrono::Utc::now().timestamp_micros()));
        write_private(&path, &der)?;
        Ok(path)
    }

    fn key(alg: Algorithm, pkcs8: &[u8]) -> anyhow::Result<Key> {
        let (encoding, decoding, public, jwk) = match alg {
            Algorithm::RS256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey as _;
                use rsa::pkcs8::DecodePrivateKey as _;
                use rsa::traits::PublicKeyParts as _;
                let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|e| anyhow::anyhow!("{e}"))?;
                let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
                let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
                let pkcs1 = key.to_pkcs1_der().map_err(|e| anyhow::anyhow!("{e}"))?;
                (
                    EncodingKey::from_rsa_der(pkcs1.as_bytes()),
                    DecodingKey::from_rsa_components(&n, &e)?,
                    key.n().to_bytes_be(),
                    serde_json::json!({"kty": "RSA", "n": n, "e": e}),
                )
            }
            Algorithm::ES256 => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                use p256::pkcs8::DecodePrivateKey as _;
                let key = p256::SecretKey::from_pkcs8_der(pkcs8).map_err(|e| anyhow::anyhow!("{e}"))?;
                let point = key.public_key().to_encoded_point(false);
                let (x, y) = match (point.x(), point.y()) {
                    (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
                    _ => anyhow::bail!("the P-256 public key has no coordinates"),
                };
                (
                    EncodingKey::from_ec_der(pkcs8),
                    DecodingKey::from_ec_components(&x, &y)?,
                    point.as_bytes().to_vec(),
                    serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                )
            }
            _ => {
                let signing = SigningKey::from_pkcs8_der(pkcs8).map_err(|e| anyhow::anyhow!("{e}"))?;
                let public = signing.verifying_key().to_bytes();
                let x = URL_SAFE_NO_PAD.encode(public);
                (
                    EncodingKey::from_ed_der(pkcs8),
                    DecodingKey::from_ed_components(&x)?,
                    public.to_vec(),
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                )
            }
        };
        let kid = kid_of(&public);
        let mut jwk = jwk;
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = format!("{alg:?}").into();
        jwk["use"] = "sig".into();
        Ok(Key { kid, alg, encoding, decoding, jwk })
    }

    fn newest(&self, alg: Algorithm) -> &Key {
        self.keys.iter().rev().find(|k| k.alg == alg).expect("a key of every algorithm")
    }

    /// Signs access-token `claims` with the newest Ed25519 key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let key = self.newest(Algorithm::EdDSA);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Signs an OpenID Connect ID token with the newest key of `alg` (`RS256`, `ES256` or `EdDSA`).
    pub fn sign_id_token(&self, alg: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
        let alg = match alg {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            other => anyhow::bail!("unsupported ID token algorithm '{other}'"),
        };
        let key = self.newest(alg);
        let mut header = Header::new(alg);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Verifies an ID token this server signed (any algorithm, expired or not): the
    /// `id_token_hint` of a logout. Answers its claims.
    pub fn verify_id_token(&self, token: &str, issuer: &str) -> Result<serde_json::Value, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let kid = header.kid.ok_or_else(|| TokenError::Malformed("no key id (kid)".into()))?;
        let key = self.keys.iter().find(|k| k.kid == kid && k.alg == header.alg).ok_or(TokenError::UnknownKey(kid))?;
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[issuer]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(e.to_string()),
            }
        })
    }

    /// Verifies an access token: signature, issuer and (unless `allow_expired`) expiry.
    /// Tokens with an audience must say they are access tokens (`typ: at+jwt`), so an
    /// ID token is never taken for one.
    pub fn verify(&self, token: &str, allow_expired: bool) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed(format!("algorithm {:?}, expected EdDSA", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| TokenError::Malformed("no key id (kid)".into()))?;
        let key =
            self.keys.iter().find(|k| k.kid == kid && k.alg == Algorithm::EdDSA).ok_or(TokenError::UnknownKey(kid))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.validate_exp = !allow_expired;
        // An audience is accepted only on a declared access token (any audience: the
        // resource server checks its own); without the declaration a token with one is refused.
        validation.validate_aud = header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE);
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

    /// The public keys as a JSON Web Key Set, newest first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.keys.iter().rev().map(|k| k.jwk.clone()).collect();
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
    if let Some(key) = read_secret(dir)? {
        return Ok(key);
    }
    std::fs::create_dir_all(dir)?;
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    write_private(&dir.join("secret.key"), &key)?;
    Ok(key)
}

/// The server secret in `dir`, if there is one (commands that only read create nothing).
pub fn read_secret(dir: &Path) -> anyhow::Result<Option<[u8; 32]>> {
    let path = dir.join("secret.key");
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = bytes.try_into().map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))?;
    Ok(Some(key))
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
            aud: None,
            scope: None,
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
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 6, "two keys of each of EdDSA, RS256 and ES256");
        let eddsa: Vec<_> = keys.iter().filter(|k| k["alg"] == "EdDSA").map(|k| k["kid"].clone()).collect();
        assert_eq!(eddsa, [kid(&new), kid(&old)], "newest first");
        for alg in ["RS256", "ES256"] {
            assert_eq!(keys.iter().filter(|k| k["alg"] == alg).count(), 2, "{alg}");
        }
    }

    #[test]
    fn id_tokens_verify_with_their_jwk_and_are_never_access_tokens() {
        let keys = KeySet::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let now = chrono::Utc::now().timestamp();
        for alg in ["RS256", "ES256", "EdDSA"] {
            let claims = serde_json::json!({
                "iss": "https://id.example.com", "sub": Uuid::now_v7().to_string(), "aud": "client",
                "exp": now + 600, "iat": now, "sid": Uuid::now_v7().to_string(), "jti": "j",
            });
            let token = keys.sign_id_token(alg, &claims).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(format!("{:?}", header.alg), alg);
            let verified = keys.verify_id_token(&token, "https://id.example.com").unwrap();
            assert_eq!(verified["aud"], "client");
            assert!(keys.verify_id_token(&token, "https://other.example.com").is_err(), "issuer checked");
            assert!(keys.verify(&token, false).is_err(), "an {alg} ID token is not an access token");
        }
        assert!(keys.sign_id_token("HS256", &serde_json::json!({})).is_err());
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

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn keys() -> &'static (KeySet, String) {
            static KEYS: std::sync::OnceLock<(KeySet, String)> = std::sync::OnceLock::new();
            KEYS.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let keys = KeySet::load_or_create(dir.path()).unwrap();
                let good = keys.sign(&claims(600)).unwrap();
                (keys, good)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any text presented as a bearer token is refused with a reason, never a panic.
            #[test]
            fn any_text_is_refused(text in "\\PC{0,300}") {
                let (keys, _) = keys();
                prop_assert!(keys.verify(&text, false).is_err());
                prop_assert!(keys.verify(&text, true).is_err());
                prop_assert!(keys.verify_id_token(&text, ISSUER).is_err());
            }

            /// A signed token with any one character changed, or cut short, is never accepted
            /// as anything but itself.
            #[test]
            fn a_changed_token_is_refused(at in any::<prop::sample::Index>(), to in any::<char>(), cut in any::<bool>()) {
                let (keys, good) = keys();
                let i = at.index(good.len());
                let changed: String = if cut {
                    good[..i].to_string()
                } else {
                    good.char_indices().map(|(j, c)| if j == i { to } else { c }).collect()
                };
                prop_assume!(&changed != good);
                // Base64url ignores the padding bits of a segment's last character: a change
                // there can leave the decoded bytes, and so the signature, intact.
                if let Ok(claims) = keys.verify(&changed, false) {
                    prop_assert_eq!(claims, keys.verify(good, false).unwrap());
                }
            }
        }
    }
}
