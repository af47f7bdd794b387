//! Connection strings parsed the way libpq parses them, in both forms:
//!
//! * URL: `postgres[ql]://[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`,
//!   every part percent-decoded;
//! * key/value: `key = value` pairs separated by white space, a value either
//!   bare (a backslash escapes the next character) or in single quotes (a
//!   backslash escapes `'` and `\`).
//!
//! Redaction is built on the parser rather than on pattern matching: a string
//! that parses is re-rendered from its parameters with every secret replaced,
//! and a string that does not parse is never echoed at all. So whatever the
//! quoting, escaping or encoding, the password libpq would send is never shown.

use std::fmt::Write as _;

/// Parameters whose value is a secret.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// Shown instead of a secret.
pub const MASK: &str = "***";

/// Which form a connection string was written in (redaction keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Url,
    KeyValue,
}

/// A parsed connection string: its parameters in the order given (a later
/// duplicate overrides an earlier one, as in libpq).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub form: Form,
    params: Vec<(String, String)>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnParams({})", self.render_redacted())
    }
}

/// Why a string is not a connection string. Never holds a value from it:
/// only keys and positions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn err(s: impl Into<String>) -> ParseError {
    ParseError(s.into())
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl ConnParams {
    pub fn parse(s: &str) -> Result<ConnParams, ParseError> {
        if is_url(s) {
            parse_url(s)
        } else {
            parse_key_value(s)
        }
    }

    /// The effective value of `key` (the last one given).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every occurrence of `key`, returning the effective value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let value = self.get(key).map(str::to_string);
        self.params.retain(|(k, _)| k != key);
        value
    }

    /// Sets `key`, replacing any value it had.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.params.retain(|(k, _)| k != key);
        self.params.push((key.to_string(), value.into()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The parameters as a key/value string, values quoted where needed, so any
    /// character survives a round trip through libpq's or tokio-postgres'
    /// parser. Contains the password: only for handing to a driver.
    pub fn to_key_value(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.params {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{k}={}", quote_if_needed(v));
        }
        out
    }

    /// The string in its own form with every secret masked (a `dbname` that
    /// holds a connection string, which libpq expands, is redacted too).
    pub fn render_redacted(&self) -> String {
        let shown = |k: &str, v: &str| -> String {
            if SECRET_KEYS.contains(&k) {
                MASK.to_string()
            } else if k == "dbname" && (v.contains('=') || is_url(v)) {
                redact(v)
            } else {
                v.to_string()
            }
        };
        match self.form {
            Form::KeyValue => {
                let mut out = String::new();
                for (k, v) in &self.params {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    let v = shown(k, v);
                    let v = if v == MASK { v } else { quote_if_needed(&v) };
                    let _ = write!(out, "{k}={v}");
                }
                out
            }
            Form::Url => {
                let mut out = String::from("postgres://");
                let user = self.get("user");
                let password = self.get("password");
                if let Some(u) = user {
                    out.push_str(&url_encode(u));
                }
                if password.is_some() {
                    out.push(':');
                    out.push_str(MASK);
                }
                if user.is_some() || password.is_some() {
                    out.push('@');
                }
                let hosts: Vec<&str> = self
                    .get("host")
                    .map_or(Vec::new(), |h| h.split(',').collect());
                let ports: Vec<&str> = self
                    .get("port")
                    .map_or(Vec::new(), |p| p.split(',').collect());
                for i in 0..hosts.len().max(ports.len()) {
                    if i > 0 {
                        out.push(',');
                    }
                    if let Some(h) = hosts.get(i) {
                        if h.contains(':') {
                            let _ = write!(out, "[{h}]");
                        } else {
                            out.push_str(&url_encode(h));
                        }
                    }
                    if let Some(p) = ports.get(i).filter(|p| !p.is_empty()) {
                        let _ = write!(out, ":{p}");
                    }
                }
                if let Some(db) = self.get("dbname") {
                    out.push('/');
                    out.push_str(&url_encode(&shown("dbname", db)));
                }
                let mut sep = '?';
                for (k, v) in &self.params {
                    if matches!(k.as_str(), "user" | "password" | "host" | "port" | "dbname") {
                        continue;
                    }
                    let v = shown(k, v);
                    let v = if v == MASK { v } else { url_encode(&v) };
                    let _ = write!(out, "{sep}{}={v}", url_encode(k));
                    sep = '&';
                }
                out
            }
        }
    }
}

/// The string with its password (and any other secret) masked; a string that
/// does not parse is not shown at all.
pub fn redact(s: &str) -> String {
    match ConnParams::parse(s) {
        Ok(p) => p.render_redacted(),
        Err(_) if is_url(s) => "postgres://(unparseable connection string)".to_string(),
        Err(_) => "(unparseable connection string)".to_string(),
    }
}

/// The connection string without its password (and other secrets), for
/// records kept on disk: what is left logs in with the password found by
/// libpq's rules (`PGPASSWORD`, the password file) when it is used again.
pub fn without_password(s: &str) -> String {
    match ConnParams::parse(s) {
        Ok(mut p) => {
            p.take("password");
            p.take("sslpassword");
            p.render_redacted()
        }
        Err(_) => redact(s),
    }
}

/// `'value'` with `\` and `'` escaped: parses back to `value` in libpq and tokio-postgres.
pub fn quote_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn quote_if_needed(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        v.to_string()
    } else {
        quote_value(v)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn decode(s: &str, what: &str) -> Result<String, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| err(format!("invalid percent-encoding in the {what}")))?;
            if hex == 0 {
                return Err(err(format!("forbidden %00 in the {what}")));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err(format!("the {what} is not UTF-8 once decoded")))
}

/// A host as libpq would look it up: a name, an IP address, or a Unix socket
/// directory. Anything else is refused, so that a mistyped password (an
/// unencoded `@` or `/` in it) makes the string unparseable instead of
/// turning part of the password into a host name shown in logs.
fn valid_host(h: &str) -> bool {
    if h.starts_with('/') {
        return !h
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c == ':' || c == ',');
    }
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

fn parse_url(s: &str) -> Result<ConnParams, ParseError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| err("not a postgres:// URL"))?;
    let mut params = Vec::new();
    // As libpq: the user info ends at the first `@` before any `/`.
    // An `@` the user info did not take (a second one, or one after a `/`)
    // is almost always an unencoded `@` or `/` in the password.
    let stray_at = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => rest[i + 1..]
            .split('?')
            .next()
            .is_some_and(|a| a.contains('@')),
        _ => rest.split('?').next().is_some_and(|a| a.contains('@')),
    };
    let rest = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => {
            let (info, after) = (&rest[..i], &rest[i + 1..]);
            match info.split_once(':') {
                Some((u, p)) => {
                    if !u.is_empty() {
                        params.push(("user".into(), decode(u, "user name")?));
                    }
                    params.push(("password".into(), decode(p, "password")?));
                }
                None if !info.is_empty() => {
                    params.push(("user".into(), decode(info, "user name")?))
                }
                None => {}
            }
            after
        }
        _ => rest,
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (netloc, rest) = rest.split_at(end);
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    if !netloc.is_empty() {
        for part in netloc.split(',') {
            let (host, port) = if let Some(v6) = part.strip_prefix('[') {
                let close = v6
                    .find(']')
                    .ok_or_else(|| err("unterminated [ in the host"))?;
                let after = &v6[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => p,
                    None if after.is_empty() => "",
                    None => return Err(err("unexpected characters after ] in the host")),
                };
                (v6[..close].to_string(), port)
            } else {
                match part.split_once(':') {
                    Some((h, p)) => (decode(h, "host")?, p),
                    None => (decode(part, "host")?, ""),
                }
            };
            // An `@`, `/` or `:` left unencoded in a password is the usual cause.
            let hint = if stray_at {
                "; an `@` in the user name or password must be percent-encoded as %40 (`/` as %2F, `:` as %3A)"
            } else {
                ""
            };
            if !host.is_empty() && !valid_host(&host) {
                return Err(err(format!("invalid characters in the host{hint}")));
            }
            if !port.chars().all(|c| c.is_ascii_digit()) {
                return Err(err(format!("the port is not a number{hint}")));
            }
            hosts.push(host);
            ports.push(port.to_string());
        }
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        params.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.push(("port".into(), ports.join(",")));
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if let Some(db) = path.strip_prefix('/') {
        if !db.is_empty() {
            params.push(("dbname".into(), decode(db, "database name")?));
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| err("a URL parameter without `=`"))?;
            let k = decode(k, "parameter name")?;
            let v = decode(v, &format!("value of {k}"))?;
            // libpq's URL spelling of sslmode=require.
            if k == "ssl" && v == "true" {
                params.push(("sslmode".into(), "require".into()));
            } else {
                params.push((k, v));
            }
        }
    }
    Ok(ConnParams {
        form: Form::Url,
        params,
    })
}

fn parse_key_value(s: &str) -> Result<ConnParams, ParseError> {
    let mut params = Vec::new();
    let mut chars = s.char_indices().map(|(_, c)| c).peekable();
    let mut at = 0usize;
    loop {
        // Errors name the pair by its position only: a misquoted value makes
        // "keys" out of pieces of a password.
        at += 1;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(err(format!("missing \"=\" after the key of pair {at}")));
        }
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!(
                "the key of pair {at} has characters other than letters, digits and _"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(err(format!("unterminated quoted value in pair {at}"))),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(err(format!("unterminated quoted value in pair {at}"))),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(c2) = chars.next() {
                        value.push(c2);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        params.push((key, value));
    }
    Ok(ConnParams {
        form: Form::KeyValue,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_no_password() {
        assert_eq!(
            without_password("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u@h:5432/db?sslmode=require"
        );
        assert_eq!(
            without_password("host=h password='s 3' user=u"),
            "host=h user=u"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        assert!(!redact("postgres://u@h/db?password=s3cret").contains("s3cret"));
    }

    /// Every secret in `s` is absent from its redaction.
    fn hides(s: &str, secret: &str) -> String {
        let r = redact(s);
        assert!(
            !r.contains(secret),
            "{s:?} redacted to {r:?} shows {secret:?}"
        );
        r
    }

    #[test]
    fn urls_redact_after_decoding() {
        assert_eq!(
            hides("postgres://u:s3cret@h:5432/db", "s3cret"),
            "postgres://u:***@h:5432/db"
        );
        // Percent-encoded password: neither the encoded nor the decoded form shows.
        let r = hides("postgresql://u:p%40ss%3Aw%2Fo%20rd@h/db", "p%40ss");
        assert!(!r.contains("p@ss") && r.contains("u:***@h"), "{r}");
        assert_eq!(
            ConnParams::parse("postgresql://u:p%40ss%3Aw%2Fo%20rd@h/db")
                .unwrap()
                .get("password"),
            Some("p@ss:w/o rd")
        );
        // Password as a parameter, encoded and repeated.
        hides("postgres://u@h/db?password=s3cret", "s3cret");
        hides("postgres://u@h/db?pass%77ord=s3cret", "s3cret");
        hides(
            "postgres://u@h/db?password=a&password=s3cret&sslmode=require",
            "s3cret",
        );
        hides("postgres://u@h/db?sslpassword=k3y", "k3y");
        // A user without a password, IPv6 and several hosts.
        assert_eq!(
            redact("postgres://u@[::1]:5432,h2:5433/db"),
            "postgres://u@[::1]:5432,h2:5433/db"
        );
        // Unencoded @ or / in the password: libpq cannot parse it either, and
        // nothing of the string is shown.
        hides("postgres://u:p@ss@h/db", "ss");
        hides("postgres://u:pQ/ss@h/db", "pQ");
        hides("postgres://u:s3c%zzret@h/db", "s3c");
        // A dbname holding a connection string (libpq expands it).
        hides("postgres://u@h/password%3Ds3cret%20host%3Dx", "s3cret");
    }

    #[test]
    fn key_values_redact_with_quotes_spaces_and_escapes() {
        assert_eq!(
            hides("host=h password=s3cret user=u", "s3cret"),
            "host=h password=*** user=u"
        );
        hides("host=h password = s3cret", "s3cret");
        hides("host=h password='two words' user=u", "two");
        hides("host=h password='it\\'s a \\\\secret' user=u", "secret");
        hides("host=h password=back\\ slash user=u", "slash");
        hides("host=h\tpassword=\ts3cret\nuser=u", "s3cret");
        hides("password=a password=s3cret", "s3cret");
        hides("host=h sslpassword='k 3y'", "3y");
        hides("dbname='host=x password=s3cret'", "s3cret");
        // Unterminated quote: not parseable, not shown.
        assert_eq!(
            redact("host=h password='s3cret"),
            "(unparseable connection string)"
        );
        hides("host=h password", "password=");
        let p = ConnParams::parse("password='it\\'s a \\\\ x' user = u").unwrap();
        assert_eq!(p.get("password"), Some("it's a \\ x"));
        assert_eq!(p.get("user"), Some("u"));
    }

    #[test]
    fn key_value_rendering_round_trips() {
        let p =
            ConnParams::parse("postgres://u:p%27q%5C%20r@h:1/d?application_name=a%20b").unwrap();
        let kv = p.to_key_value();
        let back = ConnParams::parse(&kv).unwrap();
        assert_eq!(back.get("password"), Some("p'q\\ r"));
        assert_eq!(back.get("application_name"), Some("a b"));
        let cfg: tokio_postgres::Config = kv.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"p'q\\ r"[..]));
    }
}
