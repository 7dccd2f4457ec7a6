//! HTTPS for the agent's HTTP API: the rustls server configuration made
//! from a PEM certificate chain and private key (`--http-tls-cert`,
//! `--http-tls-key`), and the PEM certificates the CLI trusts
//! (`--ca-cert`).
//!
//! rustls runs on the `ring` provider (no cmake or NASM needed to build),
//! with TLS 1.3 and 1.2. Errors name the file and say what is wrong with
//! it, never what is in it (a key file's contents stay out of the logs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or has no certificate.
    #[error("cannot use TLS certificate file {}: {message}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key file cannot be read or has no private key.
    #[error("cannot use TLS key file {}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key does not go with the certificate, or rustls refuses them.
    #[error(
        "TLS key file {} does not go with certificate file {}: {message}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// The crypto provider of every TLS configuration here: `ring`.
// rustls 0.23.48 deprecates the ring provider because it has no
// post-quantum key exchange (aws-lc-rs has); it is still supported and
// it is what builds here without cmake and NASM. TLS 1.3 key exchange is
// then X25519 or the NIST curves.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a PEM error says, without the bytes it quotes (a line of a key
/// file must not end up in a log).
fn describe(e: pem::Error, missing: &str) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => missing.to_string(),
        pem::Error::SectionTooLarge => "a PEM section is too large".to_string(),
        _ => "not valid PEM".to_string(),
    }
}

/// The certificates of a PEM file (at least one), in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    const MISSING: &str = "no PEM certificate (BEGIN CERTIFICATE) in it";
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(describe(e, MISSING)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(describe(e, MISSING)))?;
    if certs.is_empty() {
        return Err(error(MISSING.to_string()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1): the first one.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        message: describe(
            e,
            "no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it",
        ),
    })
}

/// The server configuration of the certificate chain in `cert` and the
/// private key in `key` (PEM files): TLS 1.3 and 1.2, no client
/// certificates, HTTP/1.1 announced through ALPN. Fails if a file cannot
/// be read or parsed, or if the key does not go with the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let private = load_key(key)?;
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
