//! Unguessable identifiers (lock tokens, session ids): 128 bits from the
//! operating system's CSPRNG, encoded URL-safe base64 without padding.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::Error;

/// Random bytes in every token.
pub const TOKEN_BYTES: usize = 16;

/// A fresh random token: 22 URL-safe characters carrying 128 random bits.
///
/// # Errors
/// [`Error::Internal`] when the operating system cannot provide randomness.
pub fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| Error::Internal(format!("no randomness from the OS: {error}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::{TOKEN_BYTES, random_token};

    #[test]
    fn tokens_are_url_safe_distinct_and_carry_128_bits() {
        let tokens: HashSet<String> = (0..1000).map(|_| random_token().unwrap()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(token).unwrap().len(), TOKEN_BYTES);
        }
    }
}
