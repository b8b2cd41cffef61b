//! TLS between nodes, mutual: each side shows a certificate signed by the
//! cluster's CA (`cluster.tls_ca`) and accepts only the other's signed by
//! it, so a machine without a cluster certificate cannot join even with the
//! cookie. rustls with the ring provider, chosen explicitly (two providers
//! are linked into the binary).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{ClusterError, ClusterSettings};

struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn err(what: &str, path: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what} {path:?}: {e}"))
}

/// The configured PEM files, or `None` when TLS is off.
fn material(s: &ClusterSettings) -> Result<Option<Material>, ClusterError> {
    let files = [&s.tls_cert, &s.tls_key, &s.tls_ca];
    let set = files.iter().filter(|f| !f.trim().is_empty()).count();
    if set == 0 {
        return Ok(None);
    }
    if set != 3 {
        return Err(ClusterError::Config(
            "cluster.tls_cert, cluster.tls_key and cluster.tls_ca go together: set all three or none"
                .into(),
        ));
    }
    let certs = CertificateDer::pem_file_iter(&s.tls_cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("cluster.tls_cert", &s.tls_cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&s.tls_key)
        .map_err(|e| err("cluster.tls_key", &s.tls_key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in
        CertificateDer::pem_file_iter(&s.tls_ca).map_err(|e| err("cluster.tls_ca", &s.tls_ca, e))?
    {
        let ca = ca.map_err(|e| err("cluster.tls_ca", &s.tls_ca, e))?;
        roots
            .add(ca)
            .map_err(|e| err("cluster.tls_ca", &s.tls_ca, e))?;
    }
    if certs.is_empty() || roots.is_empty() {
        return Err(ClusterError::Tls(
            "cluster.tls_cert and cluster.tls_ca must each hold a certificate".into(),
        ));
    }
    Ok(Some(Material {
        certs,
        key,
        roots: Arc::new(roots),
    }))
}

/// The control node's side: its certificate, and worker certificates
/// required.
pub(super) fn acceptor(s: &ClusterSettings) -> Result<Option<TlsAcceptor>, ClusterError> {
    let Some(m) = material(s)? else {
        return Ok(None);
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(m.roots, provider())
        .build()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.certs, m.key)
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// A worker node's side: the control node's certificate checked against
/// the CA, and its own shown.
pub(super) fn connector(s: &ClusterSettings) -> Result<Option<TlsConnector>, ClusterError> {
    let Some(m) = material(s)? else {
        return Ok(None);
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_root_certificates(m.roots)
        .with_client_auth_cert(m.certs, m.key)
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    Ok(Some(TlsConnector::from(Arc::new(config))))
}
