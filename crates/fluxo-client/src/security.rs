//! How connections to a cluster are secured: plaintext, or TLS (Kafka's
//! `security.protocol = SSL`) checked against a CA file or the system's
//! roots, and with or without SASL/PLAIN (`SASL_PLAINTEXT`, `SASL_SSL`).
//! Certificates are checked the way a browser checks them: the broker's
//! certificate must name the host (or IP address) dialled.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{ClientError, Result};

/// The security of every connection a client makes.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<PlainCredentials>,
}

/// A SASL/PLAIN user and password.
#[derive(Clone)]
pub struct PlainCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (&self.tls, &self.sasl) {
            (Some(_), Some(_)) => "SASL_SSL",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (None, None) => "PLAINTEXT",
        })
    }
}

impl Security {
    /// Plain TCP (Kafka's `PLAINTEXT`).
    pub fn plaintext() -> Security {
        Security::default()
    }

    /// From Kafka's client settings, checked together: `security.protocol`
    /// (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`, any case),
    /// `ssl.ca.location`, and the SASL/PLAIN user and password. `flag`
    /// names the settings in messages (`--kafka-` for `serve`).
    pub fn from_settings(
        protocol: &str,
        ca_location: Option<&Path>,
        username: Option<String>,
        password: Option<String>,
        flag: &str,
    ) -> Result<Security> {
        let protocol = protocol.to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(ClientError::Protocol(format!(
                "{flag}security-protocol {other}: use plaintext, ssl, sasl_plaintext or sasl_ssl"
            )))
            }
        };
        if !tls && ca_location.is_some() {
            return Err(ClientError::Protocol(format!(
                "{flag}ssl-ca-location is for {flag}security-protocol ssl or sasl_ssl"
            )));
        }
        let security = match tls {
            true => Security::tls(ca_location)?,
            false => Security::plaintext(),
        };
        match (sasl, username, password) {
            (true, Some(user), Some(password)) => Ok(security.with_sasl_plain(user, password)),
            (true, _, _) => Err(ClientError::Protocol(format!(
                "{flag}security-protocol {protocol} needs {flag}sasl-username and \
                 {flag}sasl-password"
            ))),
            (false, None, None) => Ok(security),
            (false, _, _) => Err(ClientError::Protocol(format!(
                "{flag}sasl-username and {flag}sasl-password are for {flag}security-protocol \
                 sasl_plaintext or sasl_ssl"
            ))),
        }
    }

    /// TLS, trusting the certificates in the PEM file `ca` (Kafka's
    /// `ssl.ca.location`), or the system's roots without one.
    pub fn tls(ca: Option<&Path>) -> Result<Security> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        ClientError::Protocol(format!(
                            "cannot read the CA certificates in {}: {e}",
                            path.display()
                        ))
                    })?;
                if certs.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "{} holds no PEM certificate",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        ClientError::Protocol(format!(
                            "a certificate in {} is not usable as a CA: {e}",
                            path.display()
                        ))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(ClientError::Protocol(
                        "no CA certificates found on this system; give a CA file".into(),
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Protocol(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Security {
            tls: Some(Arc::new(config)),
            sasl: None,
        })
    }

    /// The same, authenticating every connection with SASL/PLAIN.
    pub fn with_sasl_plain(mut self, username: String, password: String) -> Security {
        self.sasl = Some(PlainCredentials { username, password });
        self
    }

    pub(crate) fn sasl(&self) -> Option<&PlainCredentials> {
        self.sasl.as_ref()
    }

    /// Secures `stream`, a connection to `addr` (HOST:PORT), if TLS is on.
    pub(crate) async fn secure(&self, stream: TcpStream, addr: &str) -> Result<Stream> {
        let Some(config) = &self.tls else {
            return Ok(Stream::Plain(stream));
        };
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            ClientError::Protocol(format!("{host} is not a name TLS can check: {e}"))
        })?;
        let stream = TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|reason| ClientError::Connect {
                addr: addr.to_string(),
                reason: std::io::Error::new(
                    reason.kind(),
                    format!("TLS handshake failed: {reason}"),
                ),
            })?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// A connection, plain or under TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}
