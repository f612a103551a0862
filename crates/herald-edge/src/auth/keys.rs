//! Verification keys and which algorithms each may check.
//!
//! A key's type is fixed when it is loaded — from the PEM file's algorithm identifier, or from a
//! JWK's `kty`/`crv` — and a token's `alg` must be one of that type's algorithms
//! ([`KeyKind::allows`]). That rule, not the token, decides how a signature is checked: it is what
//! stops alg confusion (an `HS256` token "signed" with the RSA public key as an HMAC secret).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The type of a verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// A shared secret: `HS256`, `HS384`, `HS512`.
    Hmac,
    /// An RSA public key: `RS256`..`RS512`, `PS256`..`PS512`.
    Rsa,
    /// An EC P-256 public key: `ES256`.
    EcP256,
    /// An EC P-384 public key: `ES384`.
    EcP384,
    /// An Ed25519 public key: `EdDSA`.
    Ed25519,
}

impl KeyKind {
    /// Whether a token with this `alg` may be checked with a key of this type.
    pub(super) fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA key",
            KeyKind::EcP256 => "EC P-256 key",
            KeyKind::EcP384 => "EC P-384 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key ready to verify signatures.
#[derive(Clone)]
pub(super) struct Key {
    /// Its type, which limits the algorithms it checks.
    pub(super) kind: KeyKind,
    /// The one algorithm it is pinned to (a JWK's `alg`), if any.
    pub(super) alg: Option<Algorithm>,
    /// The key material.
    pub(super) decoding: DecodingKey,
}

impl Key {
    /// A shared HMAC secret (used as raw bytes, as Centrifugo does).
    pub(super) fn hmac(secret: &str) -> Self {
        Key {
            kind: KeyKind::Hmac,
            alg: None,
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// Whether a token with this `alg` may be checked with this key.
    pub(super) fn allows(&self, alg: Algorithm) -> bool {
        self.kind.allows(alg) && self.alg.map_or(true, |pinned| pinned == alg)
    }

    /// Loads a PEM public key file (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`).
    pub(super) async fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| format!("auth.public_key_file {}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("auth.public_key_file {}: {e}", path.display()))
    }

    /// Parses a PEM public key, detecting its type.
    pub(super) fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
        let (label, der) = pem_block(text)?;
        let kind = match label {
            "RSA PUBLIC KEY" => KeyKind::Rsa,
            "PUBLIC KEY" => spki_kind(&der)?,
            l if l.contains("PRIVATE KEY") => {
                return Err(
                    "holds a private key; give the public key (openssl pkey -pubout)".into(),
                )
            }
            l => return Err(format!("holds a {l:?}, not a PUBLIC KEY")),
        };
        let decoding = match kind {
            KeyKind::Rsa => DecodingKey::from_rsa_pem(pem),
            KeyKind::EcP256 | KeyKind::EcP384 => DecodingKey::from_ec_pem(pem),
            KeyKind::Ed25519 => DecodingKey::from_ed_pem(pem),
            KeyKind::Hmac => unreachable!("a PEM file is never an HMAC key"),
        }
        .map_err(|e| format!("not a valid {kind}: {e}"))?;
        Ok(Key {
            kind,
            alg: None,
            decoding,
        })
    }

    /// A JWKS entry as a signing key, or why it is skipped: symmetric (`oct`) keys, encryption
    /// keys and unsupported curves are never used.
    pub(super) fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("not a signature key (`use`)".into());
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                ref c => return Err(format!("unsupported EC curve {c:?}")),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                return Err(format!("unsupported OKP curve {:?}", p.curve))
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys are not taken from a JWKS".into())
            }
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => {
                Some(signing_alg(a).ok_or_else(|| format!("`alg` {a:?} is not for signatures"))?)
            }
        };
        if alg.is_some_and(|a| !kind.allows(a)) {
            return Err(format!("`alg` {alg:?} does not fit a {kind}"));
        }
        let decoding =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("not a valid {kind}: {e}"))?;
        Ok(Key {
            kind,
            alg,
            decoding,
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The label and DER bytes of the first PEM block.
fn pem_block(text: &str) -> Result<(&str, Vec<u8>), String> {
    const NOT_PEM: &str = "not a PEM file (no -----BEGIN …----- line)";
    let start = text.find("-----BEGIN ").ok_or(NOT_PEM)?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or(NOT_PEM)?;
    let label = &rest[..label_end];
    let body = &rest[label_end + "-----".len()..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or_else(|| format!("PEM block {label:?} has no END line"))?;
    let b64: String = body[..end].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("PEM block {label:?} is not valid base64"))?;
    Ok((label, der))
}

/// The key type named by a SubjectPublicKeyInfo's AlgorithmIdentifier.
fn spki_kind(der: &[u8]) -> Result<KeyKind, String> {
    // DER encodings (tag, length, value) of the object identifiers that matter.
    const RSA: &[u8] = &[6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];
    const EC: &[u8] = &[6, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
    const P256: &[u8] = &[6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7];
    const P384: &[u8] = &[6, 5, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[6, 3, 0x2b, 0x65, 0x70];
    const BAD: &str = "not a DER SubjectPublicKeyInfo";
    // SEQUENCE { SEQUENCE { OID algorithm, parameters }, BIT STRING key }
    let spki = der_sequence(der).ok_or(BAD)?;
    let algorithm = der_sequence(spki).ok_or(BAD)?;
    if algorithm.starts_with(RSA) {
        Ok(KeyKind::Rsa)
    } else if let Some(curve) = algorithm.strip_prefix(EC) {
        if curve.starts_with(P256) {
            Ok(KeyKind::EcP256)
        } else if curve.starts_with(P384) {
            Ok(KeyKind::EcP384)
        } else {
            Err("EC key on a curve other than P-256 or P-384".into())
        }
    } else if algorithm.starts_with(ED25519) {
        Ok(KeyKind::Ed25519)
    } else {
        Err("key type is not RSA, EC or Ed25519".into())
    }
}

/// The contents of the DER SEQUENCE at the start of `der`.
fn der_sequence(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    rest.get(..len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::fixture;

    #[test]
    fn pem_types_are_detected() {
        for (file, kind) in [
            ("rsa_public.pem", KeyKind::Rsa),
            ("rsa_public_pkcs1.pem", KeyKind::Rsa),
            ("ec256_public.pem", KeyKind::EcP256),
            ("ec384_public.pem", KeyKind::EcP384),
            ("ed25519_public.pem", KeyKind::Ed25519),
        ] {
            let key = Key::from_pem(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(key.kind, kind, "{file}");
        }
    }

    #[test]
    fn private_keys_and_garbage_are_refused() {
        let err = Key::from_pem(&fixture("rsa_private.pem")).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        assert!(Key::from_pem(b"hello").unwrap_err().contains("not a PEM"));
        let broken = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(Key::from_pem(broken).is_err());
    }

    #[tokio::test]
    async fn a_missing_file_names_the_key_and_path() {
        let err = Key::from_pem_file(Path::new("/nonexistent/key.pem"))
            .await
            .unwrap_err();
        assert!(
            err.contains("auth.public_key_file /nonexistent/key.pem"),
            "{err}"
        );
    }

    #[test]
    fn each_kind_allows_only_its_algorithms() {
        use Algorithm::*;
        let all = [
            HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
        ];
        let allowed = |k: KeyKind| all.iter().filter(|a| k.allows(**a)).count();
        assert_eq!(allowed(KeyKind::Hmac), 3);
        assert_eq!(allowed(KeyKind::Rsa), 6);
        assert_eq!(allowed(KeyKind::EcP256), 1);
        assert_eq!(allowed(KeyKind::EcP384), 1);
        assert_eq!(allowed(KeyKind::Ed25519), 1);
        assert!(!KeyKind::Rsa.allows(HS256));
        assert!(!KeyKind::EcP256.allows(ES384));
    }

    #[test]
    fn jwks_entries_become_keys_or_are_skipped() {
        let jwk = |v: serde_json::Value| serde_json::from_value::<Jwk>(v).unwrap();
        let a = Key::from_jwk(&jwk(serde_json::from_slice(&fixture("jwk_a.json")).unwrap()));
        let a = a.unwrap();
        assert_eq!((a.kind, a.alg), (KeyKind::Rsa, Some(Algorithm::RS256)));
        assert!(a.allows(Algorithm::RS256) && !a.allows(Algorithm::PS256));
        let b = Key::from_jwk(&jwk(serde_json::from_slice(&fixture("jwk_b.json")).unwrap()));
        assert_eq!(b.unwrap().kind, KeyKind::EcP256);
        let oct = jwk(serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}));
        assert!(Key::from_jwk(&oct).unwrap_err().contains("symmetric"));
        let mut enc: serde_json::Value = serde_json::from_slice(&fixture("jwk_a.json")).unwrap();
        enc["use"] = "enc".into();
        assert!(Key::from_jwk(&jwk(enc)).is_err());
    }
}
