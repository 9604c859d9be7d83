//! An identity provider for tests: real Ed25519 and P-256 keys (made fresh
//! per issuer), their JWKS, and tokens signed with them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

/// Signs tokens the way an identity provider would.
pub struct JwtIssuer {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
}

impl Default for JwtIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtIssuer {
    /// Fresh keys: kid `ed` (Ed25519, EdDSA) and kid `ec` (P-256, ES256).
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 key");
        let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).expect("ed25519 key");
        let ec_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p-256 key");
        let ec = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref(), &rng)
            .expect("p-256 key");
        Self { ed, ec }
    }

    /// The public keys as a JWKS document.
    pub fn jwks(&self) -> String {
        let ec = self.ec.public_key().as_ref();
        serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(self.ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": URL_SAFE_NO_PAD.encode(&ec[1..33]), "y": URL_SAFE_NO_PAD.encode(&ec[33..65])},
        ]})
        .to_string()
    }

    /// A token with `claims`, its header naming `kid` and `alg`, signed by
    /// the key `kid` names (`ed`, else `ec`) whatever `alg` says.
    pub fn token(&self, kid: &str, alg: &str, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let sig = if kid == "ed" {
            self.ed.sign(signed.as_bytes()).as_ref().to_vec()
        } else {
            self.ec
                .sign(&SystemRandom::new(), signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec()
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
