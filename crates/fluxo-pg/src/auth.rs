//! Startup: trust, or a cleartext password for one configured user; the
//! server parameters every client gets; and the registration that lets a
//! CancelRequest find the connection it is for.

use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::mechanism::{AuthMechanism, AuthMechanismFactory};
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler,
};
use pgwire::api::{ClientInfo, ConnectionManager};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::PgConfig;

/// The Postgres release whose protocol and catalog queries fluxo answers
/// like, in the `server_version` form Debian uses (`15.18 (Debian ...)`), so
/// that libpq, psycopg and JDBC read a plain 15.0 out of it and psql sends
/// the catalog queries `catalog.rs` knows.
pub const SERVER_VERSION: &str = concat!("15.0 (fluxo ", env!("CARGO_PKG_VERSION"), ")");
pub const SERVER_VERSION_NUM: &str = "150000";

/// What `SELECT version()` answers.
pub fn version() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} on {}-{}, 64-bit",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The startup handler: trust without a password, else the cleartext
/// password exchange. Either way the connection is registered for
/// cancellation before it is ready for queries.
pub struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider>,
    password: Option<CleartextPasswordAuth<Credentials>>,
}

impl Startup {
    pub fn new(config: &PgConfig, connections: Arc<ConnectionManager>) -> Startup {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_string();
        Startup {
            driver: AuthDriver::new(parameters).with_connection_manager(connections),
            password: config.password.clone().map(|password| {
                CleartextPasswordAuth::new(Arc::new(Credentials {
                    user: config.user.clone(),
                    password,
                }))
            }),
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                match &self.password {
                    None => {
                        return self.driver.complete_authentication(client, None).await;
                    }
                    Some(factory) => {
                        let mechanism: Box<dyn AuthMechanism> =
                            AuthMechanismFactory::<()>::create(factory);
                        self.driver.begin_authentication(client, mechanism).await?
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
        }
    }
}

/// The one user and password `--pg-user`/`--pg-password` configure.
pub struct Credentials {
    user: String,
    password: String,
}

impl Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    fn accepts(&self, user: &str, password: &[u8]) -> bool {
        // Both are compared in full either way, so the time taken does not
        // tell which one was wrong, nor how much of the password was right.
        let user_ok = same_bytes(user.as_bytes(), self.user.as_bytes());
        let password_ok = same_bytes(password, self.password.as_bytes());
        user_ok & password_ok
    }
}

/// Compares without an early exit at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(!*x);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// The ErrorResponse Postgres sends for a wrong user or password: FATAL, so
/// the connection closes after it.
fn authentication_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        "28P01".to_string(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(None, self.password.as_bytes().to_vec()))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented_password: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        if self.accepts(user, presented_password) {
            Ok(None)
        } else {
            tracing::info!(user, "postgres: password authentication failed");
            Err(authentication_failed(user))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_user_and_password_are_accepted() {
        let credentials = Credentials {
            user: "fluxo".into(),
            password: "s3cret".into(),
        };
        assert!(credentials.accepts("fluxo", b"s3cret"));
        assert!(!credentials.accepts("fluxo", b"s3cre"));
        assert!(!credentials.accepts("fluxo", b"s3cret!"));
        assert!(!credentials.accepts("fluxo", b""));
        assert!(!credentials.accepts("other", b"s3cret"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }

    #[test]
    fn a_failed_login_is_fatal_with_sqlstate_28p01() {
        let e = authentication_failed("mallory");
        assert!(e.is_fatal());
        let info = ErrorInfo::from(e);
        assert_eq!(info.code, "28P01");
        assert_eq!(
            info.message,
            "password authentication failed for user \"mallory\""
        );
    }

    #[test]
    fn the_server_version_reads_as_15_0() {
        assert!(SERVER_VERSION.starts_with("15.0 ("));
        assert!(version().starts_with("PostgreSQL 15.0 (fluxo "));
    }
}
