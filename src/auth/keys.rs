//! Loading verification keys: PEM files and JWK sets.

use super::*;

pub(super) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Algorithms an RSA key may verify: PKCS#1 v1.5 and PSS with every hash.
const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The ECDSA algorithm for an uncompressed or compressed SEC1 point, by its length.
fn ec_algorithm(point: &[u8]) -> Option<Algorithm> {
    match point.len() {
        65 | 33 => Some(Algorithm::ES256),
        97 | 49 => Some(Algorithm::ES384),
        _ => None,
    }
}

pub(super) fn load_pem(path: &Path, bytes: &[u8]) -> Result<Key, LoadError> {
    let err = |reason: &str| LoadError::Key {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err("not a PEM text file"))?;
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .collect();
    match labels.as_slice() {
        [] => return Err(err("no PEM block")),
        ["PUBLIC KEY"] | ["RSA PUBLIC KEY"] => {}
        [label] if label.contains("PRIVATE") => {
            return Err(err(
                "holds a private key; give the public key only (openssl pkey -pubout)",
            ));
        }
        [_] => return Err(err("expected a `PUBLIC KEY` or `RSA PUBLIC KEY` PEM block")),
        _ => return Err(err("holds more than one PEM block; use one file per key")),
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok(Key {
            kid: None,
            algorithms: RSA_ALGORITHMS.to_vec(),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let alg = ec_algorithm(key.as_bytes())
            .ok_or_else(|| err("EC key on an unsupported curve (P-256 and P-384 are)"))?;
        return Ok(Key {
            kid: None,
            algorithms: vec![alg],
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        if key.as_bytes().len() != 32 {
            return Err(err("Ed25519 key of the wrong length"));
        }
        return Ok(Key {
            kid: None,
            algorithms: vec![Algorithm::EdDSA],
            key,
        });
    }
    Err(err("not an RSA, EC or Ed25519 public key"))
}

#[derive(Deserialize)]
struct JwkSetFile {
    keys: Vec<Value>,
}

/// The JWK members this module reads; others (`x5c`, `x5t`, ...) are ignored.
#[derive(Deserialize)]
struct JwkFields {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<serde::de::IgnoredAny>,
}

pub(super) fn load_jwks(path: &Path, bytes: &[u8]) -> Result<Vec<Key>, LoadError> {
    let set: JwkSetFile = serde_json::from_slice(bytes).map_err(|source| LoadError::Jwks {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (index, raw) in set.keys.into_iter().enumerate() {
        let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
        let err = |reason: String| LoadError::Jwk {
            path: path.to_owned(),
            index,
            kid: kid.clone(),
            reason,
        };
        let jwk: JwkFields = serde_json::from_value(raw).map_err(|e| err(e.to_string()))?;
        if let Some(key) = jwk_key(jwk).map_err(err)? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(LoadError::Config(format!(
            "{} holds no signature verification key",
            path.display()
        )));
    }
    Ok(keys)
}

/// The key for one JWK, `None` for keys meant for encryption.
fn jwk_key(jwk: JwkFields) -> Result<Option<Key>, String> {
    if jwk.use_.as_deref() == Some("enc") {
        return Ok(None);
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Ok(None);
    }
    if jwk.d.is_some() {
        return Err("holds private key material; publish the public key only".into());
    }
    let need = |field: &Option<String>, name: &str| {
        field.clone().ok_or_else(|| format!("missing `{name}`"))
    };
    let bad = |e: jsonwebtoken::errors::Error| format!("bad key material: {e}");
    let (key, algorithms) = match jwk.kty.as_str() {
        "RSA" => {
            let key = DecodingKey::from_rsa_components(&need(&jwk.n, "n")?, &need(&jwk.e, "e")?)
                .map_err(bad)?;
            (key, RSA_ALGORITHMS.to_vec())
        }
        "EC" => {
            let curve_alg = match jwk.crv.as_deref() {
                Some("P-256") => Algorithm::ES256,
                Some("P-384") => Algorithm::ES384,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let key = DecodingKey::from_ec_components(&need(&jwk.x, "x")?, &need(&jwk.y, "y")?)
                .map_err(bad)?;
            if ec_algorithm(key.as_bytes()) != Some(curve_alg) {
                return Err("coordinates do not fit the curve".into());
            }
            (key, vec![curve_alg])
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("unsupported OKP curve {:?}", jwk.crv));
            }
            let key = DecodingKey::from_ed_components(&need(&jwk.x, "x")?).map_err(bad)?;
            if key.as_bytes().len() != 32 {
                return Err("Ed25519 key of the wrong length".into());
            }
            (key, vec![Algorithm::EdDSA])
        }
        "oct" => return Err("symmetric keys are not accepted here; use hs256_secret".into()),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    let algorithms = match &jwk.alg {
        None => algorithms,
        Some(name) => {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("unsupported algorithm {name:?}"))?;
            if !algorithms.contains(&alg) {
                return Err(format!("algorithm {name} does not fit a {} key", jwk.kty));
            }
            vec![alg]
        }
    };
    Ok(Some(Key {
        kid: jwk.kid,
        algorithms,
        key,
    }))
}
