//! The API key a client sends to a daemon: `authorization: Bearer KEY` metadata on every
//! call, marked sensitive (kept out of HTTP/2 header compression tables) and never shown
//! by `Debug`.

use std::fmt;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::{Error, worker::transport::AUTHORIZATION};

/// An `authorization: Bearer KEY` metadata value.
#[derive(Clone)]
pub(crate) struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// The token for `key`; fails for a key with characters other than visible ASCII.
    pub(crate) fn new(key: &str) -> Result<BearerToken, Error> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidApiKey);
        }
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {key}"))
            .map_err(|_| Error::InvalidApiKey)?;
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }

    /// The metadata value.
    pub(crate) fn value(&self) -> &AsciiMetadataValue {
        &self.0
    }

    /// Adds the token to a request's metadata.
    pub(crate) fn insert_into(&self, metadata: &mut MetadataMap) {
        metadata.insert(AUTHORIZATION, self.0.clone());
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_bearer_and_hides_the_key() {
        let token = BearerToken::new("s3cr3t-KEY_1").expect("valid key");
        let mut metadata = MetadataMap::new();
        token.insert_into(&mut metadata);
        assert_eq!(
            metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
            Some("Bearer s3cr3t-KEY_1")
        );
        assert!(token.value().is_sensitive());
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }

    #[test]
    fn refuses_keys_that_are_not_visible_ascii() {
        for key in ["", "with space", "line\nbreak", "clé"] {
            assert!(
                matches!(BearerToken::new(key), Err(Error::InvalidApiKey)),
                "{key:?}"
            );
        }
    }
}
