//! End users' JSON Web Tokens, forwarded by the BFF in `x-feed-user-token`
//! and verified against a JWKS file: issuer, audience, expiry and not-before,
//! and a signature by one of its keys (Ed25519 `EdDSA` or P-256 `ES256`).
//! With it on, a leaked bff token alone cannot act for every user: each
//! call also needs a token its user's identity provider signed for them.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// Metadata key carrying the end user's JWT on bff calls.
pub const TOKEN_HEADER: &str = "x-feed-user-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    EdDsa,
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::EdDsa => "EdDSA",
            Alg::Es256 => "ES256",
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    alg: Alg,
    /// The raw public key: 32 bytes (Ed25519) or an uncompressed P-256 point.
    public: Vec<u8>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    aud: Audience,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// `aud`: one string or a list of them.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn contains(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(all) => all.iter().any(|a| a == want),
            Audience::None => false,
        }
    }
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("{field}: not base64url"))
}

/// Verifies end users' tokens.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: HashMap<String, Key>,
    issuer: String,
    audience: String,
    leeway_secs: i64,
}

impl Verifier {
    /// From a JWKS document (`{"keys": [...]}`, OKP/Ed25519 and EC/P-256
    /// keys; others are refused so a file never half-loads), the issuer and
    /// audience every token must name, and the clock leeway in seconds.
    pub fn from_jwks(jwks: &str, issuer: &str, audience: &str, leeway_secs: u64) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| anyhow::anyhow!("JWKS: {e}"))?;
        anyhow::ensure!(!issuer.is_empty(), "the JWT issuer must be set");
        anyhow::ensure!(!audience.is_empty(), "the JWT audience must be set");
        let mut keys = HashMap::new();
        for (i, k) in set.keys.into_iter().enumerate() {
            let key = match (k.kty.as_str(), k.crv.as_str()) {
                ("OKP", "Ed25519") => Key {
                    alg: Alg::EdDsa,
                    public: b64("x", &k.x).map_err(anyhow::Error::msg)?,
                },
                ("EC", "P-256") => {
                    let mut point = vec![4u8];
                    point.extend(b64("x", &k.x).map_err(anyhow::Error::msg)?);
                    point.extend(b64("y", &k.y).map_err(anyhow::Error::msg)?);
                    Key {
                        alg: Alg::Es256,
                        public: point,
                    }
                }
                (kty, crv) => anyhow::bail!("JWKS key {i}: {kty}/{crv} is not supported (OKP/Ed25519, EC/P-256)"),
            };
            keys.insert(k.kid, key);
        }
        anyhow::ensure!(!keys.is_empty(), "JWKS: no keys");
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs: leeway_secs.min(3600) as i64,
        })
    }

    /// The subject (`sub`) of a token valid at `now_secs`, or why not.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<String, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not a signed JWT (header.payload.signature)".into());
        };
        let header: Header =
            serde_json::from_slice(&b64("header", h)?).map_err(|_| "header: not a JWT header".to_string())?;
        let key = self
            .keys
            .get(&header.kid)
            .ok_or_else(|| format!("no key {:?} in the JWKS", header.kid))?;
        // The algorithm comes from the key, never from the token alone
        // ("none", or a key of one type used as another).
        if header.alg != key.alg.name() {
            return Err(format!(
                "alg {:?} does not match the key's {}",
                header.alg,
                key.alg.name()
            ));
        }
        let signed = &token[..h.len() + 1 + p.len()];
        let sig = b64("signature", s)?;
        let verified = match key.alg {
            Alg::EdDsa => UnparsedPublicKey::new(&signature::ED25519, &key.public).verify(signed.as_bytes(), &sig),
            Alg::Es256 => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.public).verify(signed.as_bytes(), &sig)
            }
        };
        verified.map_err(|_| "bad signature".to_string())?;
        let claims: Claims =
            serde_json::from_slice(&b64("payload", p)?).map_err(|_| "payload: not JWT claims".to_string())?;
        if claims.iss != self.issuer {
            return Err("wrong issuer".into());
        }
        if !claims.aud.contains(&self.audience) {
            return Err("wrong audience".into());
        }
        match claims.exp {
            Some(exp) if now_secs <= exp.saturating_add(self.leeway_secs) => {}
            Some(_) => return Err("expired".into()),
            None => return Err("no expiry".into()),
        }
        if claims
            .nbf
            .is_some_and(|nbf| now_secs < nbf.saturating_sub(self.leeway_secs))
        {
            return Err("not valid yet".into());
        }
        if claims.sub.is_empty() {
            return Err("no subject".into());
        }
        Ok(claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use feed_testkit::jwt::JwtIssuer as Issuer;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn claims(sub: &str) -> serde_json::Value {
        serde_json::json!({"sub": sub, "iss": "https://id.example", "aud": "feed", "exp": NOW + 60, "nbf": NOW - 60})
    }

    #[test]
    fn a_token_signed_by_a_jwks_key_for_the_issuer_and_audience_names_its_subject() {
        let idp = Issuer::new();
        let v = Verifier::from_jwks(&idp.jwks(), "https://id.example", "feed", 30).expect("jwks");
        assert_eq!(v.verify(&idp.token("ed", "EdDSA", &claims("7")), NOW), Ok("7".into()));
        assert_eq!(v.verify(&idp.token("ec", "ES256", &claims("8")), NOW), Ok("8".into()));
        let many =
            serde_json::json!({"sub": "9", "iss": "https://id.example", "aud": ["other", "feed"], "exp": NOW + 1});
        assert_eq!(v.verify(&idp.token("ed", "EdDSA", &many), NOW), Ok("9".into()));
    }

    #[test]
    fn forged_expired_or_misaddressed_tokens_are_refused() {
        let idp = Issuer::new();
        let v = Verifier::from_jwks(&idp.jwks(), "https://id.example", "feed", 30).expect("jwks");
        let good = idp.token("ed", "EdDSA", &claims("7"));
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims("7");
            f(&mut c);
            idp.token("ed", "EdDSA", &c)
        };
        let cases = [
            ("expired", with(&|c| c["exp"] = (NOW - 31).into())),
            (
                "no expiry",
                with(&|c| c.as_object_mut().expect("obj").remove("exp").map(|_| ()).unwrap_or(())),
            ),
            ("not valid yet", with(&|c| c["nbf"] = (NOW + 31).into())),
            ("wrong issuer", with(&|c| c["iss"] = "https://evil.example".into())),
            ("wrong audience", with(&|c| c["aud"] = "other".into())),
            ("no subject", with(&|c| c["sub"] = "".into())),
            ("alg", idp.token("ed", "ES256", &claims("7"))),
            ("no key", idp.token("other", "EdDSA", &claims("7"))),
            ("bad signature", format!("{}x", &good[..good.len() - 2])),
            (
                "not a signed JWT",
                good.splitn(3, '.').take(2).collect::<Vec<_>>().join("."),
            ),
        ];
        for (why, token) in cases {
            let err = v.verify(&token, NOW).expect_err(why);
            assert!(err.contains(why) || why == "bad signature", "{why}: {err}");
        }
        // A payload changed after signing.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims("8").to_string());
        assert_eq!(v.verify(&parts.join("."), NOW), Err("bad signature".into()));
        // "alg": "none" with no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ed"}"#),
            URL_SAFE_NO_PAD.encode(claims("7").to_string())
        );
        assert!(v.verify(&none, NOW).is_err());
    }

    #[test]
    fn a_jwks_with_an_unsupported_key_or_none_is_refused_whole() {
        assert!(Verifier::from_jwks(r#"{"keys": [{"kty": "RSA", "kid": "r"}]}"#, "i", "a", 0).is_err());
        assert!(Verifier::from_jwks(r#"{"keys": []}"#, "i", "a", 0).is_err());
        assert!(Verifier::from_jwks("not json", "i", "a", 0).is_err());
    }
}
