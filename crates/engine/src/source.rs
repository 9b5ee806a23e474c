//! Connection URLs of live sources, split into what may be shown and the password.

use std::fmt;

use crate::Secret;

/// A source's connection URL. The password (from the user info or a `password` query
/// parameter) is held apart; [`SourceUrl::shown`] never carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// Without password.
    url: url::Url,
    password: Option<Secret>,
}

impl SourceUrl {
    /// Parses `scheme://user:password@host:port/db?params`. Percent escapes are decoded as
    /// the URL standard says; a malformed URL is an error that says what a good one looks
    /// like.
    pub fn parse(text: &str) -> Result<SourceUrl, String> {
        let example = "use a URL like SCHEME://USER:PASSWORD@HOST:PORT/DATABASE";
        let mut url = url::Url::parse(text).map_err(|e| format!("the source URL is not valid ({e}); {example}"))?;
        if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
            return Err(format!("the source URL has no host; {example}"));
        }
        let mut password = url
            .password()
            .map(|p| percent_decode(p).map(Secret::new))
            .transpose()
            .map_err(|_| "the password in the source URL is not valid UTF-8 after decoding".to_string())?;
        // Setting the password can fail only for URLs that cannot have one, ruled out above.
        let _ = url.set_password(None);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        if pairs.iter().any(|(k, _)| k == "password") {
            let mut kept = Vec::new();
            for (k, v) in pairs {
                if k == "password" {
                    password = Some(Secret::new(v));
                } else {
                    kept.push((k, v));
                }
            }
            if kept.is_empty() {
                url.set_query(None);
            } else {
                // Percent escapes, not the form encoding's `+` for a space: connection URLs
                // are read by libraries (libpq) that take `+` literally.
                let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string();
                let query: Vec<String> = kept.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
                url.set_query(Some(&query.join("&")));
            }
        }
        Ok(SourceUrl { url, password })
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL without any password: safe to store, log and show.
    pub fn shown(&self) -> String {
        self.url.to_string()
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// The user name, decoded.
    pub fn user(&self) -> Option<String> {
        let raw = self.url.username();
        (!raw.is_empty()).then(|| percent_decode(raw).unwrap_or_else(|_| raw.to_owned()))
    }

    /// The URL without the password, as a `url::Url` for an engine to add parameters to.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

/// What is escaped in a query parameter's name or value: controls, space and the characters
/// that delimit parameters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'%')
    .add(b'<')
    .add(b'>');

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned())
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceUrl({}, password: {})", self.url, if self.password.is_some() { "***" } else { "none" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_kept_apart() {
        let url = SourceUrl::parse("db://repl:s%40cret@db.example:5432/main?sslmode=disable").unwrap();
        assert_eq!(url.shown(), "db://repl@db.example:5432/main?sslmode=disable");
        assert_eq!(url.password().unwrap().expose(), "s@cret");
        assert_eq!(url.user().as_deref(), Some("repl"));
        assert_eq!((url.host(), url.port()), ("db.example", Some(5432)));
        let url = SourceUrl::parse("db://db/x").unwrap();
        assert_eq!((url.shown().as_str(), url.password()), ("db://db/x", None));
    }

    /// Regression: a percent escape followed by a multibyte character panicked, and a
    /// trailing escape was not decoded.
    #[test]
    fn escapes_next_to_multibyte_characters_and_at_the_end_decode() {
        let url = SourceUrl::parse("db://u:%41é%41@h/db").unwrap();
        assert_eq!(url.password().unwrap().expose(), "AéA");
        let url = SourceUrl::parse("db://u:ab%21@h/db").unwrap();
        assert_eq!(url.password().unwrap().expose(), "ab!");
        let url = SourceUrl::parse("db://u:%e2%82%ac@h/db").unwrap();
        assert_eq!(url.password().unwrap().expose(), "€");
        assert!(SourceUrl::parse("db://u:%ff@h/db").is_err());
    }

    /// Regression: a `password=` parameter was stored and echoed back.
    #[test]
    fn a_password_parameter_is_taken_out() {
        let url = SourceUrl::parse("db://u@h:5/db?password=top%20secret&sslmode=require").unwrap();
        assert_eq!(url.password().unwrap().expose(), "top secret");
        assert_eq!(url.shown(), "db://u@h:5/db?sslmode=require");
        assert!(!format!("{url:?}").contains("secret"));
        let url = SourceUrl::parse("db://u@h/db?password=x&application_name=my%20app&options=-c%20a%3Db").unwrap();
        assert_eq!(url.shown(), "db://u@h/db?application_name=my%20app&options=-c%20a%3Db");
        let url = SourceUrl::parse("db://h/db?password=x").unwrap();
        assert_eq!(url.shown(), "db://h/db");
    }

    #[test]
    fn bad_urls_say_what_a_good_one_looks_like() {
        for bad in ["/var/lib/x", "db://", "not a url", "db:///db"] {
            let err = SourceUrl::parse(bad).unwrap_err();
            assert!(err.contains("SCHEME://USER:PASSWORD@HOST"), "{bad}: {err}");
        }
    }
}
