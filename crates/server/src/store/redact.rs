//! Store URLs and connection strings made safe to print: in error messages,
//! at start, in logs (issue 11, item 7).

/// A store URL or connection string with every password form replaced by
/// `***`, safe to print (issue 11, item 7): the userinfo of a URL
/// (`postgres://u:p@h/db`, `redis://:p@h`, `rediss://u:p@h`), any query
/// parameter naming a password (`?password=`, `?sslpassword=`, matched
/// after percent-decoding and case-insensitively), and in a libpq
/// `key=value` connection string the value of `password` / `sslpassword`,
/// quoted or not. When in doubt it hides more, never less.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_url_rest(rest)),
        None if url.contains('=') => describe_key_values(url),
        None => url.to_owned(),
    }
}

/// Whether a parameter name (already percent-decoded) holds a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("pass") || key.contains("pwd") || key.contains("secret") || key.contains("token")
}

/// A URL after its `scheme://`.
fn redact_url_rest(rest: &str) -> String {
    // The userinfo ends at the last `@`: a password may hold `@`, `/`, `?`
    // or `#` unencoded, so everything before that `@` is hidden but a
    // plain user name. An `@` inside the query makes this hide more than
    // needed, never less.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(rest.len());
    if let Some(userinfo) = userinfo {
        let (user, has_password) = match userinfo.split_once(':') {
            Some((user, _)) => (user, true),
            None => (userinfo, false),
        };
        let plain = user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%+".contains(&b));
        match (plain, has_password) {
            (true, true) => out.push_str(&format!("{user}:***@")),
            (true, false) => out.push_str(&format!("{user}@")),
            (false, _) => out.push_str("***@"),
        }
    }
    match after.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&describe_query(query));
        }
        None => out.push_str(after),
    }
    out
}

/// A query string with the values of secret parameters hidden.
fn describe_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(&percent_decode(key)) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A libpq `key=value` connection string (`host=h password='p q'`) with the
/// values of secret keys hidden. Values may be single-quoted, with `\'`
/// and `\\` escapes; whitespace may surround `=`. Whatever does not parse
/// (an unterminated quote, a key with no `=`) is hidden from there on.
fn describe_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let sep = if out.is_empty() { "" } else { " " };
        let Some(eq) = rest.find('=') else {
            out.push_str(&format!("{sep}***"));
            break;
        };
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            out.push_str(&format!("{sep}***"));
            break;
        }
        let value_start = rest[eq + 1..].trim_start();
        let (value, after, complete) = if let Some(quoted) = value_start.strip_prefix('\'') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match end {
                Some(i) => (&value_start[..i + 2], &quoted[i + 1..], true),
                None => (value_start, "", false),
            }
        } else {
            let mut end = value_start.len();
            let mut escaped = false;
            for (i, c) in value_start.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    c if c.is_whitespace() => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            (&value_start[..end], &value_start[end..], true)
        };
        out.push_str(sep);
        if !complete || is_secret_key(key) {
            out.push_str(&format!("{key}=***"));
        } else {
            out.push_str(&format!("{key}={value}"));
        }
        if !complete {
            break;
        }
        rest = after.trim_start();
    }
    out
}

/// Where a store is, for its own messages: `scheme://host[:port]/path`
/// with the user name, any password and the query left out entirely
/// (`redis://:secret@host:6379/0?x=y` → `redis://host:6379/0`). A string
/// that is not a URL shows only its length.
pub(crate) fn store_location(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("<{} characters, not a URL>", url.chars().count());
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn every_password_form_is_hidden() {
        for (url, shown) in [
            ("postgres://u:p4ss@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p@ss@h:5432/db",
                "postgresql://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://u@h/db?password=p4ss",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=disable&PassWord=p4ss&x=1",
                "postgres://h/db?sslmode=disable&PassWord=***&x=1",
            ),
            (
                "postgres://h/db?pass%77ord=p4ss",
                "postgres://h/db?pass%77ord=***",
            ),
            (
                "postgres://h/db?sslpassword=p4ss",
                "postgres://h/db?sslpassword=***",
            ),
            ("postgres://h/db?user=u&password=p4@ss", "postgres://***@ss"),
            ("postgres://u:p/4?s#s@h/db", "postgres://u:***@h/db"),
            ("redis://:p4ss@h:6379", "redis://:***@h:6379"),
            ("redis://u:p4ss@h/0", "redis://u:***@h/0"),
            (
                "rediss://u:p4ss@h/0?ca_file=/ca.pem",
                "rediss://u:***@h/0?ca_file=/ca.pem",
            ),
            ("redis://h/0?password=p4ss", "redis://h/0?password=***"),
            (
                "redis+unix:///run/r.sock?password=p4ss",
                "redis+unix:///run/r.sock?password=***",
            ),
            (
                "host=h port=1 user=u password=p4ss dbname=db",
                "host=h port=1 user=u password=*** dbname=db",
            ),
            (
                "host=h password = 'p4 \\' ss' dbname=db",
                "host=h password=*** dbname=db",
            ),
            ("password=p4\\ ss dbname=db", "password=*** dbname=db"),
            ("host=h password='p4ss", "host=h password=***"),
            ("host='unterminated p4ss", "host=***"),
            ("host=h p4ss", "host=h ***"),
            ("memory", "memory"),
            ("sqlite", "sqlite"),
        ] {
            let described = redact_url(url);
            assert_eq!(described, shown, "{url}");
            assert!(!described.contains("p4"), "{url} -> {described}");
        }
    }
}
