//! Names of images and clones, validated once at the edge: a [`Name`] cannot hold a path
//! separator, `..`, or anything that would be awkward in a path, a URL or a shell.

use std::fmt;

/// A valid name: 1 to 63 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter or
/// a digit. Names become directory names and URL path segments as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// The rule of [`Name::new`] as a regular expression, for the OpenAPI schema.
pub const PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {name:?}: {why}; use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
)]
pub struct InvalidName {
    pub name: String,
    pub why: &'static str,
}

pub const MAX_LEN: usize = 63;

impl Name {
    pub fn new(name: &str) -> Result<Name, InvalidName> {
        let invalid = |why| Err(InvalidName { name: name.chars().take(80).collect(), why });
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > MAX_LEN {
            return invalid("it is longer than 63 characters");
        }
        if name.contains('/') || name.contains("..") {
            return invalid("it contains a path separator or '..'");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return invalid("it contains a character other than a-z, 0-9, '-' and '_'");
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return invalid("it does not start with a letter or digit");
        }
        Ok(Name(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Name, InvalidName> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PATTERN))
            .min_length(Some(1))
            .max_length(Some(MAX_LEN))
            .description(Some("A name of an image or a clone: 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or a digit"))
            .examples(["prod-2026-11"])
            .into()
    }
}

impl utoipa::ToSchema for Name {}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for name in ["a", "prod-2026_11", "0day", &"x".repeat(63)] {
            assert_eq!(Name::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn bad_names_say_why() {
        for (name, why) in [
            ("", "empty"),
            ("../etc", "path separator"),
            ("a/b", "path separator"),
            ("a..b", "path separator"),
            ("Prod", "character"),
            ("a b", "character"),
            ("-a", "start"),
            (&"x".repeat(64), "longer"),
        ] {
            let err = Name::new(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name:?}: {err}");
        }
    }

    #[test]
    fn the_pattern_says_the_same_as_the_code() {
        // The pattern is ^[a-z0-9][a-z0-9_-]{0,62}$; check it by hand on the edges.
        assert_eq!(PATTERN, "^[a-z0-9][a-z0-9_-]{0,62}$");
        for ok in ["a", "9", "a-", "a_b", &"x".repeat(63)] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in ["_a", "-a", "A", "a.b", &"x".repeat(64)] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"../x\"").is_err());
    }
}
