//! API keys: `dk_<id>_<secret>`, where the id (16 hex digits) finds the stored row without a
//! scan and the secret (64 hex digits, 256 random bits) proves the holder. Only the secret's
//! SHA-256 is stored. A plain hash is enough here: password stretching defends guessable
//! passwords, and a 256-bit random secret cannot be guessed, so its hash cannot be inverted.
//! The REST API, the CLI and the server's first start all issue keys through [`issue`].

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::store::{ApiKey, NewKey, Store, StoreError};

/// Every key starts with this, so a leaked one is recognisable (and scannable) as ours.
pub const PREFIX: &str = "dk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// The most a share may weigh against the default of 1.
pub const MAX_SHARE: u32 = 1000;

/// A key as its holder sends it, split into the id and the secret.
pub struct Token<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Reads `dk_<id>_<secret>`; anything else is not a key of ours.
pub fn parse(key: &str) -> Option<Token<'_>> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |text: &str, bytes: usize| text.len() == 2 * bytes && text.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_BYTES) && hex(secret, SECRET_BYTES)).then_some(Token { id, secret })
}

/// The stored form of a secret: its SHA-256, lowercase hex.
pub fn hash(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored`, compared in constant time so the time taken does not
/// say how many leading characters matched.
pub fn verify(secret: &str, stored: &str) -> bool {
    constant_time_eq(hash(secret).as_bytes(), stored.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Why a key could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request names the field (`name`, `share`) and says what is wrong.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("reading random bytes: {0}")]
    Random(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a key's name and share: a name is what `?owner=` and the job's `owner` show.
pub fn validate(name: &str, share: u32) -> Result<(), IssueError> {
    let name_ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if !name_ok {
        let message = "must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`".to_string();
        return Err(IssueError::Invalid { field: "name", message });
    }
    if !(1..=MAX_SHARE).contains(&share) {
        return Err(IssueError::Invalid { field: "share", message: format!("must be within [1, {MAX_SHARE}]") });
    }
    Ok(())
}

/// Creates a key; returns it as stored and the whole key, which exists only in this answer.
pub async fn issue(store: &dyn Store, name: &str, admin: bool, share: u32) -> Result<(ApiKey, String), IssueError> {
    validate(name, share)?;
    let id = random_hex(ID_BYTES)?;
    let secret = random_hex(SECRET_BYTES)?;
    let new = NewKey {
        prefix: format!("{PREFIX}{id}"),
        id,
        name: name.to_string(),
        secret_hash: hash(&secret),
        admin,
        share,
    };
    let key = store.create_key(&new).await?;
    let whole = format!("{}_{secret}", key.prefix);
    Ok((key, whole))
}

/// A browser session's token: as random as a key's secret, so it is stored only as its hash too.
pub fn session_token() -> std::io::Result<String> {
    random_hex(SECRET_BYTES)
}

/// Whether `text` has a session token's shape, checked before any lookup.
pub fn is_session_token(text: &str) -> bool {
    text.len() == 2 * SECRET_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `bytes` bytes from the kernel's generator, as hex.
fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_and_checked_against_their_hash() {
        let (id, secret) = (random_hex(ID_BYTES).unwrap(), random_hex(SECRET_BYTES).unwrap());
        let key = format!("dk_{id}_{secret}");
        let token = parse(&key).unwrap();
        assert_eq!((token.id, token.secret), (id.as_str(), secret.as_str()));
        let stored = hash(&secret);
        assert!(verify(token.secret, &stored));
        assert!(!verify(&random_hex(SECRET_BYTES).unwrap(), &stored));
        assert!(!verify(&secret, &stored[1..]));
        for bad in ["", "dk_", &format!("dk_{id}"), &format!("xk_{id}_{secret}"), &format!("dk_{id}_{}", &secret[1..])]
        {
            assert!(parse(bad).is_none(), "{bad} was read as a key");
        }
        assert!(parse(&format!("dk_{id}_{}z", &secret[1..])).is_none());
    }

    #[test]
    fn names_and_shares_are_checked() {
        assert!(validate("alice", 1).is_ok());
        assert!(validate("ml-team.bob@lab", MAX_SHARE).is_ok());
        for (name, share, field) in
            [("", 1, "name"), ("al ice", 1, "name"), ("alice", 0, "share"), ("a", 1001, "share")]
        {
            assert!(matches!(validate(name, share), Err(IssueError::Invalid { field: f, .. }) if f == field));
        }
    }
}
