//! Secrets (tokens, passwords, private keys): a type that never prints its value, and where a
//! secret is read from: the setting itself (file or environment), the file its `*_file` key
//! names, or a systemd credential. The source is kept so `check-config` can name it.

use std::fmt;
use std::path::Path;

use crate::error::ConfigError;

/// Where a secret came from (never its value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SecretSource {
    /// Not set anywhere.
    #[default]
    Unset,
    /// The configuration file.
    Config,
    /// A `URBANFLUX__...` environment variable.
    Env(String),
    /// The file a `*_file` key names.
    File(String),
    /// A systemd credential in `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
    Credential(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Unset => f.write_str("not set"),
            SecretSource::Config => f.write_str("config"),
            SecretSource::Env(var) => write!(f, "env ({var})"),
            SecretSource::File(path) => write!(f, "file ({path})"),
            SecretSource::Credential(name) => write!(f, "credential ({name})"),
        }
    }
}

/// A string that never prints itself (tokens, passwords, private keys).
#[derive(Clone, Default)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        let value = s.into();
        let source = if value.is_empty() {
            SecretSource::Unset
        } else {
            SecretSource::Config
        };
        Secret { value, source }
    }
    pub fn from_source(s: impl Into<String>, source: SecretSource) -> Self {
        Secret {
            value: s.into(),
            source,
        }
    }
    pub fn expose(&self) -> &str {
        &self.value
    }
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

/// By value only: the same password read from another place is the same password.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.value.is_empty() {
            "\"\""
        } else {
            "\"***\""
        })
    }
}

/// The environment variable that overrides `key` (`mqtt.password` -> `URBANFLUX__MQTT__PASSWORD`).
pub(super) fn env_var(key: &str) -> String {
    format!("URBANFLUX__{}", key.to_uppercase().replace('.', "__"))
}

/// The systemd credential `name`, if `$CREDENTIALS_DIRECTORY` holds it.
pub(super) fn credential_path(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}

/// A secret from, in order: the setting `key` itself (file or environment), the file its
/// `*_file` key names, or the systemd credential `name` in `$CREDENTIALS_DIRECTORY`.
pub(super) fn secret(
    key: &str,
    value: String,
    file: &str,
    name: &str,
) -> Result<Secret, ConfigError> {
    let file_key = format!("{key}_file");
    if !value.is_empty() {
        let var = env_var(key);
        let source = if std::env::var(&var).is_ok_and(|v| v == value) {
            SecretSource::Env(var)
        } else {
            SecretSource::Config
        };
        return Ok(Secret::from_source(value, source));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map(|s| s.trim_end_matches(['\n', '\r']).to_string())
    };
    if !file.is_empty() {
        return read(Path::new(file))
            .map(|s| Secret::from_source(s, SecretSource::File(file.to_string())))
            .map_err(|e| {
                ConfigError::new(
                    file_key,
                    format!("cannot read {file}: {e}"),
                    "point it at a readable file holding only the secret",
                )
            });
    }
    if let Some(path) = credential_path(name) {
        // An empty credential file means "not set" (the .deb installs empty ones).
        return read(&path)
            .map(|s| match s.is_empty() {
                true => Secret::default(),
                false => Secret::from_source(s, SecretSource::Credential(name.to_string())),
            })
            .map_err(|e| {
                ConfigError::new(
                    file_key,
                    format!("cannot read the credential {}: {e}", path.display()),
                    "check LoadCredential= in the unit",
                )
            });
    }
    Ok(Secret::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"***\"");
    }

    #[test]
    fn secrets_compare_by_value() {
        assert_ne!(Secret::new("old-token"), Secret::new("new-token"));
        assert_eq!(
            format!("{:?}", Secret::new("old-token")),
            format!("{:?}", Secret::new("new-token"))
        );
    }

    #[test]
    fn a_secret_file_is_named_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let p = path.display().to_string();
        let s = secret("mqtt.password", String::new(), &p, "mqtt-password").unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(s.source(), &SecretSource::File(p));
        assert_eq!(env_var("influx.token"), "URBANFLUX__INFLUX__TOKEN");
    }
}
