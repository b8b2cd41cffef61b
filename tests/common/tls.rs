//! Local HTTPS stand-ins for tests: a certificate authority and a server
//! certificate for 127.0.0.1 made at test time with rcgen (no key is ever
//! committed), and warp routes served over TLS with tokio-rustls.
//!
//! The server under test trusts the authority through
//! `MURMUR__OUTBOUND__EXTRA_ROOT_CERTS` (see [`HttpsStandIn::trust_env`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls;
use warp::Filter;

/// A running HTTPS server and the authority that signed its certificate.
pub struct HttpsStandIn {
    pub addr: SocketAddr,
    /// PEM of the authority, in a temporary folder kept while this lives.
    pub ca_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsStandIn {
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The settings that make a test server trust this stand-in and reach
    /// it on loopback.
    pub fn trust_env(&self) -> [(&'static str, String); 2] {
        [
            (
                "MURMUR__OUTBOUND__EXTRA_ROOT_CERTS",
                self.ca_pem.display().to_string(),
            ),
            ("MURMUR__OUTBOUND__ALLOWED_HOSTS", "127.0.0.1".to_string()),
        ]
    }
}

/// Serves `route` over HTTPS on a loopback port with a fresh certificate.
pub async fn serve_https<F, R>(route: F) -> HttpsStandIn
where
    F: warp::Filter<Extract = (R,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    R: warp::Reply + 'static,
{
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Murmur test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("test-ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // warp serves only plain listeners: each TLS connection goes to hyper
    // with the route as its service.
    let service = hyper_util::service::TowerToHyperService::new(warp::service(
        route.map(warp::Reply::into_response).boxed(),
    ));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                // A failed handshake (a client that refused our
                // certificate) ends that connection, not the server.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    HttpsStandIn {
        addr,
        ca_pem,
        _dir: dir,
    }
}
