//! SASL/PLAIN authentication: SaslHandshake (v1, KIP-43) names the
//! mechanism, then SaslAuthenticate (KIP-152) carries RFC 4616's message
//! `[authzid] NUL user NUL password`. When the broker has users, a
//! connection may send nothing but ApiVersions and these two until it has
//! authenticated, and a failed attempt closes it, as Kafka's brokers do.
//! PLAIN sends the password as it is: over anything but loopback or a
//! private network it belongs under TLS (a terminator in front of the
//! broker).

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

const PLAIN: &str = "PLAIN";

/// The users SASL/PLAIN accepts: name → password.
#[derive(Clone, Default, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct PlainUsers(pub BTreeMap<String, String>);

impl std::fmt::Debug for PlainUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: passwords never reach a log.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl PlainUsers {
    fn check(&self, user: &str, password: &str) -> bool {
        // Compared in full whatever the first difference, so that the time
        // taken tells nothing about the password.
        let Some(expected) = self.0.get(user) else {
            return false;
        };
        let (a, b) = (expected.as_bytes(), password.as_bytes());
        let mut differ = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            differ |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
        }
        differ == 0
    }
}

/// Where a connection is in authenticating.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Session {
    #[default]
    Start,
    /// The handshake chose PLAIN; SaslAuthenticate comes next.
    Mechanism,
    Authenticated(String),
}

impl Session {
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Session::Authenticated(_))
    }
}

pub fn handshake(
    users: Option<&PlainUsers>,
    session: &mut Session,
    request: &SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut response = SaslHandshakeResponse::default();
    if users.is_none() {
        // This broker does not authenticate: no mechanism to offer.
        response.error_code = ResponseError::UnsupportedSaslMechanism.code();
        return response;
    }
    response.mechanisms = vec![StrBytes::from_static_str(PLAIN)];
    response.error_code = if *session != Session::Start {
        ResponseError::IllegalSaslState.code()
    } else if request.mechanism.as_str() != PLAIN {
        ResponseError::UnsupportedSaslMechanism.code()
    } else {
        *session = Session::Mechanism;
        0
    };
    response
}

/// The response, and whether the connection authenticated.
pub fn authenticate(
    users: Option<&PlainUsers>,
    session: &mut Session,
    request: &SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    let mut response = SaslAuthenticateResponse::default();
    let fail = |mut response: SaslAuthenticateResponse, code: ResponseError, why: &str| {
        response.error_code = code.code();
        response.error_message = Some(StrBytes::from_string(why.to_string()));
        (response, false)
    };
    let Some(users) = users else {
        return fail(
            response,
            ResponseError::IllegalSaslState,
            "this broker does not authenticate",
        );
    };
    if *session != Session::Mechanism {
        return fail(
            response,
            ResponseError::IllegalSaslState,
            "SaslAuthenticate before a SaslHandshake for PLAIN",
        );
    }
    let message = String::from_utf8_lossy(&request.auth_bytes);
    let mut parts = message.split('\0');
    let (authzid, user, password) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(z), Some(u), Some(p), None) => (z, u, p),
        _ => {
            return fail(
                response,
                ResponseError::SaslAuthenticationFailed,
                "Authentication failed: a PLAIN message is [authzid] NUL user NUL password",
            )
        }
    };
    if (!authzid.is_empty() && authzid != user) || !users.check(user, password) {
        return fail(
            response,
            ResponseError::SaslAuthenticationFailed,
            "Authentication failed: Invalid username or password",
        );
    }
    *session = Session::Authenticated(user.to_string());
    response.error_message = None;
    (response, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> PlainUsers {
        PlainUsers(BTreeMap::from([(
            "alice".to_string(),
            "s3cret".to_string(),
        )]))
    }

    fn auth(bytes: &[u8], session: &mut Session) -> (i16, bool) {
        let mut r = SaslAuthenticateRequest::default();
        r.auth_bytes = bytes::Bytes::copy_from_slice(bytes);
        let (response, ok) = authenticate(Some(&users()), session, &r);
        (response.error_code, ok)
    }

    fn plain_session() -> Session {
        let mut session = Session::Start;
        let mut r = SaslHandshakeRequest::default();
        r.mechanism = StrBytes::from_static_str("PLAIN");
        assert_eq!(handshake(Some(&users()), &mut session, &r).error_code, 0);
        session
    }

    #[test]
    fn the_right_password_authenticates_and_anything_else_does_not() {
        let mut session = plain_session();
        assert_eq!(auth(b"\0alice\0s3cret", &mut session), (0, true));
        assert_eq!(session, Session::Authenticated("alice".into()));

        let failed = ResponseError::SaslAuthenticationFailed.code();
        for bad in [
            &b"\0alice\0s3cre"[..],
            b"\0alice\0s3cret!",
            b"\0bob\0s3cret",
            b"mallory\0alice\0s3cret",
            b"alice\0s3cret",
            b"\0alice\0s3cret\0",
        ] {
            let mut session = plain_session();
            assert_eq!(auth(bad, &mut session), (failed, false), "{bad:?}");
            assert!(!session.is_authenticated());
        }
        // The authorization id may name the user itself.
        assert_eq!(
            auth(b"alice\0alice\0s3cret", &mut plain_session()),
            (0, true)
        );
    }

    #[test]
    fn only_plain_is_offered_and_only_in_order() {
        let mut session = Session::Start;
        let mut r = SaslHandshakeRequest::default();
        r.mechanism = StrBytes::from_static_str("SCRAM-SHA-256");
        let response = handshake(Some(&users()), &mut session, &r);
        assert_eq!(
            response.error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        assert_eq!(
            response.mechanisms,
            vec![StrBytes::from_static_str("PLAIN")]
        );
        // Authenticating before a handshake chose PLAIN is out of order.
        assert_eq!(
            auth(b"\0alice\0s3cret", &mut session),
            (ResponseError::IllegalSaslState.code(), false)
        );
        // A broker without users offers nothing.
        let response = handshake(None, &mut Session::Start, &r);
        assert!(response.mechanisms.is_empty());
    }
}
