//! Connection failures an operator can act on: the reason codes of CONNACK, SUBACK and
//! DISCONNECT and the TLS errors, each turned into a short cause (also the `/readyz` reason)
//! and the key that fixes it.

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rustls::{AlertDescription, CertificateError};

pub(crate) use crate::model::Failure;

fn refused(cause: &'static str, fix: &'static str, detail: String) -> Failure {
    Failure {
        cause,
        fix,
        detail,
        refused: true,
    }
}

fn lost(detail: String) -> Failure {
    Failure {
        cause: "mqtt: connection lost or broker unreachable",
        fix: "mqtt.url (is the broker running and reachable?)",
        detail,
        refused: false,
    }
}

pub(crate) fn setup(e: &super::tls::TlsSetupError) -> Failure {
    refused(
        "mqtt: TLS configuration unusable",
        "mqtt.tls.ca_file / client_cert_file / client_key_file",
        e.to_string(),
    )
}

const FIX_PASSWORD: &str =
    "mqtt.username and mqtt.password (or mqtt.password_file / the mqtt-password credential), then SIGHUP";
const FIX_ACL: &str = "the broker's ACL for mqtt.username and mqtt.client_id";
/// Mosquitto answers a wrong password with "not authorized" (5 / 0x87), not "bad username or
/// password": both name the login.
const FIX_LOGIN: &str = "mqtt.username and mqtt.password (or mqtt.password_file / the mqtt-password credential), then SIGHUP; or the broker's ACL";
const BAD_LOGIN: &str = "mqtt: broker refused the login: bad username or password";
const NOT_AUTHORIZED: &str =
    "mqtt: broker refused the login: not authorized (wrong username or password, or not allowed)";

pub(crate) use crate::model::{FIX_SHARED, SHARED_UNSUPPORTED};

/// CONNACK refusals of MQTT 3.1.1.
fn connack_v4(code: rumqttc::ConnectReturnCode, detail: String) -> Failure {
    use rumqttc::ConnectReturnCode as C;
    match code {
        C::BadUserNamePassword => refused(BAD_LOGIN, FIX_PASSWORD, detail),
        C::NotAuthorized => refused(NOT_AUTHORIZED, FIX_LOGIN, detail),
        C::BadClientId => refused("mqtt: client id refused", "mqtt.client_id", detail),
        C::RefusedProtocolVersion => {
            refused("mqtt: protocol version refused", "mqtt.protocol", detail)
        }
        C::ServiceUnavailable | C::Success => lost(detail),
    }
}

/// CONNACK reason codes of MQTT 5.
fn connack_v5(code: p5::ConnectReturnCode, detail: String) -> Failure {
    use p5::ConnectReturnCode as C;
    match code {
        C::BadUserNamePassword => refused(BAD_LOGIN, FIX_PASSWORD, detail),
        C::NotAuthorized => refused(NOT_AUTHORIZED, FIX_LOGIN, detail),
        C::BadAuthenticationMethod => {
            refused("mqtt: authentication method refused", FIX_PASSWORD, detail)
        }
        C::Banned => refused("mqtt: banned by the broker", FIX_ACL, detail),
        C::QuotaExceeded | C::ConnectionRateExceeded => refused(
            "mqtt: quota exceeded",
            "the broker's limits for this client (it is retried with backoff)",
            detail,
        ),
        C::ClientIdentifierNotValid | C::BadClientId => {
            refused("mqtt: client id refused", "mqtt.client_id", detail)
        }
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => refused(
            "mqtt: protocol version refused",
            "mqtt.protocol = \"3.1.1\" for a broker without MQTT 5",
            detail,
        ),
        C::PacketTooLarge => refused(
            "mqtt: packet too large for the broker",
            "the broker's max_packet_size",
            detail,
        ),
        C::UseAnotherServer | C::ServerMoved => {
            refused("mqtt: broker says use another server", "mqtt.url", detail)
        }
        _ => lost(detail),
    }
}

/// SUBACK reason codes of MQTT 5: `None` granted.
pub(crate) fn suback_v5(code: &p5::SubscribeReasonCode) -> Option<&'static str> {
    use p5::SubscribeReasonCode as S;
    match code {
        S::Success(_) => None,
        S::NotAuthorized => {
            Some("mqtt: subscription refused: not authorized (check the broker's ACL)")
        }
        S::TopicFilterInvalid => Some("mqtt: subscription refused: topic filter invalid"),
        S::QuotaExceeded => Some("mqtt: subscription refused: quota exceeded"),
        S::WildcardSubscriptionsNotSupported => {
            Some("mqtt: subscription refused: wildcards not supported by the broker")
        }
        S::SharedSubscriptionsNotSupported => Some(
            "mqtt: subscription refused: shared subscriptions not supported (mqtt.share_group)",
        ),
        _ => Some("mqtt: subscription refused"),
    }
}

/// DISCONNECT reason codes sent by an MQTT 5 broker.
fn disconnect_v5(code: p5::DisconnectReasonCode, detail: String) -> Failure {
    use p5::DisconnectReasonCode as D;
    match code {
        D::NotAuthorized => refused("mqtt: not authorized", FIX_ACL, detail),
        D::SessionTakenOver => refused(
            "mqtt: session taken over by another client with our id",
            "mqtt.client_id (unique per urbanflux instance)",
            detail,
        ),
        D::QuotaExceeded | D::MessageRateTooHigh => refused(
            "mqtt: quota exceeded",
            "the broker's limits for this client",
            detail,
        ),
        D::TopicFilterInvalid => refused("mqtt: topic filter invalid", "mqtt.topics", detail),
        D::SharedSubscriptionNotSupported => refused(SHARED_UNSUPPORTED, FIX_SHARED, detail),
        D::ReceiveMaximumExceeded => refused(
            "mqtt: receive maximum exceeded",
            "mqtt.max_inflight",
            detail,
        ),
        D::AdministrativeAction => refused(
            "mqtt: disconnected by the broker's administrator",
            "the broker",
            detail,
        ),
        _ => lost(detail),
    }
}

/// A rustls error inside an I/O error (tokio-rustls wraps it), if any.
fn rustls_of(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// TLS failures, seen from our side of the handshake.
fn tls(e: &rustls::Error, detail: String) -> Failure {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer)
        | E::InvalidCertificate(CertificateError::BadSignature) => refused(
            "mqtt: broker certificate not signed by the configured CA",
            "mqtt.tls.ca_file (the CA that signed the broker's certificate)",
            detail,
        ),
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. })
        | E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => refused(
            "mqtt: broker certificate expired or not yet valid",
            "the broker's certificate (renew it) or this machine's clock",
            detail,
        ),
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => refused(
            "mqtt: broker certificate names another host (server name mismatch)",
            "mqtt.tls.server_name (the name in the broker's certificate) or the host of mqtt.url",
            detail,
        ),
        E::InvalidCertificate(_) => refused(
            "mqtt: broker certificate invalid",
            "the broker's certificate and mqtt.tls.ca_file",
            detail,
        ),
        E::AlertReceived(AlertDescription::CertificateRequired) => refused(
            "mqtt: broker requires a client certificate",
            "mqtt.tls.client_cert_file and mqtt.tls.client_key_file",
            detail,
        ),
        E::AlertReceived(AlertDescription::CertificateExpired) => refused(
            "mqtt: broker refused our client certificate: expired",
            "mqtt.tls.client_cert_file (renew it)",
            detail,
        ),
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => refused(
            "mqtt: broker refused our client certificate",
            "mqtt.tls.client_cert_file (signed by a CA the broker trusts)",
            detail,
        ),
        _ => refused(
            "mqtt: TLS handshake failed",
            "mqtt.url (a TLS port?) and mqtt.tls.*",
            detail,
        ),
    }
}

fn io(e: &std::io::Error, detail: String) -> Failure {
    match rustls_of(e) {
        Some(t) => tls(t, detail),
        None => by_text(detail),
    }
}

/// rumqttc turns an error met while reading a packet into text (a TLS alert that arrives after
/// the handshake, as with TLS 1.3 client certificates): recognise the rustls names in it.
fn by_text(detail: String) -> Failure {
    use rustls::Error as E;
    let alert = |a| E::AlertReceived(a);
    let cert = |c| E::InvalidCertificate(c);
    let known = [
        (
            "CertificateRequired",
            alert(AlertDescription::CertificateRequired),
        ),
        (
            "CertificateExpired",
            alert(AlertDescription::CertificateExpired),
        ),
        ("alert: UnknownCA", alert(AlertDescription::UnknownCA)),
        (
            "alert: BadCertificate",
            alert(AlertDescription::BadCertificate),
        ),
        (
            "alert: CertificateUnknown",
            alert(AlertDescription::CertificateUnknown),
        ),
        ("alert: AccessDenied", alert(AlertDescription::AccessDenied)),
        ("UnknownIssuer", cert(CertificateError::UnknownIssuer)),
        (
            "not valid for name",
            cert(CertificateError::NotValidForName),
        ),
    ];
    match known
        .into_iter()
        .find(|(needle, _)| detail.contains(needle))
    {
        Some((_, e)) => tls(&e, detail),
        None => lost(detail),
    }
}

fn tls_lib(e: &rumqttc::TlsError, detail: String) -> Failure {
    match e {
        rumqttc::TlsError::TLS(t) => tls(t, detail),
        rumqttc::TlsError::Io(i) => io(i, detail),
        _ => refused(
            "mqtt: TLS handshake failed",
            "mqtt.url and mqtt.tls.*",
            detail,
        ),
    }
}

pub(crate) fn v4(e: &rumqttc::ConnectionError) -> Failure {
    use rumqttc::ConnectionError as E;
    let detail = e.to_string();
    match e {
        E::ConnectionRefused(code) => connack_v4(*code, detail),
        E::Tls(t) => tls_lib(t, detail),
        E::Io(i) => io(i, detail),
        _ => by_text(detail),
    }
}

pub(crate) fn v5(e: &v5::ConnectionError) -> Failure {
    use v5::ConnectionError as E;
    let detail = e.to_string();
    match e {
        E::ConnectionRefused(code) => connack_v5(*code, detail),
        E::MqttState(v5::StateError::ServerDisconnect { reason_code, .. }) => {
            disconnect_v5(*reason_code, detail)
        }
        E::MqttState(v5::StateError::Io(i)) => io(i, detail),
        E::Tls(t) => tls_lib(t, detail),
        E::Io(i) => io(i, detail),
        _ => by_text(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_become_causes_and_keys() {
        let f = connack_v5(p5::ConnectReturnCode::BadUserNamePassword, String::new());
        assert!(f.cause.contains("bad username or password") && f.fix.contains("mqtt.password"));
        let f = connack_v5(p5::ConnectReturnCode::NotAuthorized, String::new());
        assert!(f.cause.contains("refused the login") && f.fix.contains("mqtt.password"));
        let f = connack_v5(p5::ConnectReturnCode::QuotaExceeded, String::new());
        assert_eq!(f.cause, "mqtt: quota exceeded");
        let f = by_text("IO: received fatal alert: CertificateRequired".into());
        assert!(f.cause.contains("requires a client certificate"), "{f:?}");
        assert_eq!(
            suback_v5(&p5::SubscribeReasonCode::TopicFilterInvalid),
            Some("mqtt: subscription refused: topic filter invalid")
        );
        let f = disconnect_v5(p5::DisconnectReasonCode::SessionTakenOver, String::new());
        assert!(f.fix.contains("mqtt.client_id"));
        let f = disconnect_v5(
            p5::DisconnectReasonCode::SharedSubscriptionNotSupported,
            String::new(),
        );
        assert!(f.refused && f.fix.contains("mqtt.share_group"), "{f:?}");
        let refused = suback_v5(&p5::SubscribeReasonCode::SharedSubscriptionsNotSupported);
        assert!(refused.is_some_and(|r| r.contains("mqtt.share_group")));
    }

    #[test]
    fn certificate_errors_name_the_key_to_fix() {
        let expired = tls(
            &rustls::Error::InvalidCertificate(CertificateError::Expired),
            String::new(),
        );
        assert!(expired.cause.contains("expired"));
        let name = tls(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            String::new(),
        );
        assert!(name.fix.contains("mqtt.tls.server_name"));
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(io(&wrapped, String::new()).fix.contains("mqtt.tls.ca_file"));
    }
}
