//! Secrets (tokens, passwords): a type that never prints its value, and where a secret is read
//! from: the setting itself, the file its `*_file` key names, or a systemd credential.

use std::fmt;
use std::path::Path;

use crate::error::ConfigError;

/// A string that never prints itself (tokens, passwords).
#[derive(Clone, Default, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// A secret from, in order: the setting itself, the file its `*_file` key names, or the systemd
/// credential `name` in `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
pub(super) fn secret(
    file_key: &str,
    value: String,
    file: &str,
    name: &str,
) -> Result<Secret, ConfigError> {
    if !value.is_empty() {
        return Ok(Secret::new(value));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
    };
    if !file.is_empty() {
        return read(Path::new(file)).map_err(|e| {
            ConfigError::new(
                file_key,
                format!("cannot read {file}: {e}"),
                "point it at a readable file holding only the secret",
            )
        });
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(name);
        if path.exists() {
            return read(&path).map_err(|e| {
                ConfigError::new(
                    file_key,
                    format!("cannot read the credential {}: {e}", path.display()),
                    "check LoadCredential= in the unit",
                )
            });
        }
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
}
