//! The certificates, Secrets and ConfigMaps the suite generates at setup (INDEX.md, "Things a
//! replay harness must create itself"); fresh keys each run.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";
const APP: &str = "gateway-conformance-app-backend";

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> anyhow::Result<Ca> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok(Ca { params, key, pem })
}

/// (cert PEM, key PEM) for `sans` (URIs when they contain "://"), signed by `ca` or self-signed.
fn leaf(sans: &[&str], ca: Option<&Ca>) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for san in sans {
        let san = if san.contains("://") {
            SanType::URI((*san).try_into()?)
        } else {
            SanType::DnsName((*san).try_into()?)
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().copied().unwrap_or("client"),
    );
    let key = KeyPair::generate()?;
    let cert = match ca {
        Some(ca) => {
            let issuer = Issuer::from_params(&ca.params, &ca.key);
            params.signed_by(&key, &issuer)?
        }
        None => params.self_signed(&key)?,
    };
    Ok((cert.pem(), key.serialize_pem()))
}

fn tls_secret(ns: &str, name: &str, (cert, key): &(String, String)) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": strait_echo::base64_encode(cert.as_bytes()),
            "tls.key": strait_echo::base64_encode(key.as_bytes()),
        }
    })
}

fn ca_configmap(ns: &str, name: &str, pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"ca.crt": pem}
    })
}

/// Every generated object.
pub fn generate() -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let web = leaf(&["*"], None).context("web-backend certificate")?;
    out.push(tls_secret(WEB, "certificate", &web));
    out.push(ca_configmap(WEB, "web-backend-cm", &web.0));
    let validity = leaf(&["*", "*.org", "*.wildcard.org"], None)?;
    out.push(tls_secret(
        INFRA,
        "tls-validity-checks-certificate",
        &validity,
    ));

    let checks = ca("tls-checks-ca")?;
    out.push(ca_configmap(
        INFRA,
        "tls-checks-ca-certificate",
        &checks.pem,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-checks-certificate",
        &leaf(
            &[
                "abc.example.com",
                "spiffe://abc.example.com/test-identity",
                "other.example.com",
            ],
            Some(&checks),
        )?,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-checks-client-certificate",
        &leaf(&["client.example.com"], Some(&checks))?,
    ));
    let passthrough = leaf(&["abc.example.com"], Some(&checks))?;
    out.push(tls_secret(
        INFRA,
        "tls-passthrough-checks-certificate",
        &passthrough,
    ));
    out.push(tls_secret(
        APP,
        "tls-passthrough-checks-certificate",
        &passthrough,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-terminate-checks-certificate",
        &leaf(&["tls.example.com"], Some(&checks))?,
    ));

    let validity_ca = ca("tls-validity-checks-ca")?;
    out.push(ca_configmap(
        INFRA,
        "tls-validity-checks-ca-certificate",
        &validity_ca.pem,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-validity-checks-client-certificate",
        &leaf(&["client.example.org"], Some(&validity_ca))?,
    ));
    let per_port = ca("tls-validity-checks-per-port-ca")?;
    out.push(ca_configmap(
        INFRA,
        "tls-validity-checks-per-port-ca-certificate",
        &per_port.pem,
    ));
    out.push(tls_secret(
        INFRA,
        "tls-validity-checks-per-port-client-certificate",
        &leaf(&["client-per-port.example.org"], Some(&per_port))?,
    ));
    let mismatch = ca("mismatch-ca")?;
    out.push(ca_configmap(
        INFRA,
        "mismatch-ca-certificate",
        &mismatch.pem,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_documented_object_with_decodable_pem() {
        let docs = generate().unwrap();
        let names: Vec<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        for want in [
            "Secret/certificate",
            "ConfigMap/web-backend-cm",
            "Secret/tls-validity-checks-certificate",
            "ConfigMap/tls-checks-ca-certificate",
            "Secret/tls-checks-certificate",
            "Secret/tls-checks-client-certificate",
            "Secret/tls-terminate-checks-certificate",
            "ConfigMap/mismatch-ca-certificate",
            "Secret/tls-validity-checks-per-port-client-certificate",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        for d in docs.iter().filter(|d| d["kind"] == "Secret") {
            let crt = strait_echo::base64_decode(d["data"]["tls.crt"].as_str().unwrap()).unwrap();
            let crt = String::from_utf8(crt).unwrap();
            assert_eq!(strait_echo::pem_blocks(&crt, "CERTIFICATE").len(), 1);
        }
    }
}
