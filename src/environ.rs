//! The CGI part of the WSGI environ, built from a parsed request and its
//! connection (PEP 3333, "environ Variables").
//!
//! Everything here is HTTP in, pair blob out: the Python objects (wsgi.input,
//! wsgi.errors, ...) are added by the shim. No I/O and no policy beyond the
//! mapping itself.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::http::{header, HeaderMap, HeaderName, Version};

use crate::protocol::PairBlob;

/// What the environ needs to know about the connection a request came on.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The client; `None` on a unix socket.
    pub peer: Option<SocketAddr>,
    /// The listener's address; `None` on a unix socket.
    pub local: Option<SocketAddr>,
    pub scheme: &'static str,
    /// The peer is a proxy whose forwarding headers are believed.
    pub trusted: bool,
}

/// The peers whose forwarding headers are believed (gunicorn's
/// `--forwarded-allow-ips`). Unix-socket peers always are: the socket's
/// permissions already decide who may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedProxies {
    All,
    Only(Vec<IpAddr>),
}

impl TrustedProxies {
    pub fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        match (self, peer) {
            (_, None) | (TrustedProxies::All, _) => true,
            (TrustedProxies::Only(ips), Some(peer)) => ips.contains(&peer.ip().to_canonical()),
        }
    }
}

/// What a trusted proxy says about the client: from the last element of
/// `Forwarded` (RFC 7239) when present, else the last value of each
/// `X-Forwarded-*` header: the one that proxy itself added.
#[derive(Default, Debug, PartialEq, Eq)]
struct Forwarded {
    client: Option<String>,
    scheme: Option<&'static str>,
    host: Option<String>,
    prefix: Option<String>,
}

impl Forwarded {
    fn from(headers: &HeaderMap) -> Forwarded {
        let last = |name: &str| {
            let values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
            values.flat_map(|v| v.split(',')).map(str::trim).rfind(|v| !v.is_empty()).map(str::to_string)
        };
        let scheme = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" => Some("http"),
            "https" => Some("https"),
            _ => None,
        };
        let prefix =
            last("x-forwarded-prefix").filter(|p| p.starts_with('/')).map(|p| p.trim_end_matches('/').to_string());
        if let Some(element) = last("forwarded") {
            let mut seen = Forwarded { prefix, ..Forwarded::default() };
            for pair in element.split(';') {
                let Some((key, value)) = pair.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => seen.client = node_address(value),
                    "proto" => seen.scheme = scheme(value),
                    "host" => seen.host = Some(value.to_string()).filter(|h| !h.is_empty()),
                    _ => {}
                }
            }
            return seen;
        }
        Forwarded {
            client: last("x-forwarded-for").and_then(|v| node_address(&v)),
            scheme: last("x-forwarded-proto").and_then(|v| scheme(&v)),
            host: last("x-forwarded-host"),
            prefix,
        }
    }
}

/// The address in a forwarded node (`192.0.2.1`, `192.0.2.1:80`,
/// `[2001:db8::1]:80`); `None` for `unknown` and obfuscated names.
fn node_address(node: &str) -> Option<String> {
    let host = match node.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None if node.matches(':').count() == 1 => node.split(':').next()?,
        None => node,
    };
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical().to_string())
}

/// What to do with a header whose name contains `_`, which CGI would map to
/// the same key as its `-` twin (gunicorn's `--header-map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Underscores {
    /// Leave it out of the environ.
    Drop,
    /// Answer 400.
    Refuse,
    /// Pass it on as `HTTP_X_NAME`, where it may overwrite its `-` twin.
    Dangerous,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvironError {
    #[error("the request path contains an encoded NUL byte (%00)")]
    NulInPath,
    #[error("the header name {0:?} contains an underscore")]
    Underscore(String),
}

/// The environ's CGI keys as a pair blob, latin-1 bytes throughout.
pub fn build(parts: &Parts, conn: &Conn, underscores: Underscores) -> Result<Bytes, EnvironError> {
    let uri = &parts.uri;
    let path: Vec<u8> = percent_encoding::percent_decode(uri.path().as_bytes()).collect();
    if path.contains(&0) {
        return Err(EnvironError::NulInPath);
    }
    let forwarded = if conn.trusted { Forwarded::from(&parts.headers) } else { Forwarded::default() };
    let mut env = PairBlob::with_capacity(512 + parts.headers.len() * 48);
    env.push(b"REQUEST_METHOD", parts.method.as_str().as_bytes());
    env.push(b"SCRIPT_NAME", forwarded.prefix.as_deref().unwrap_or("").as_bytes());
    env.push(b"PATH_INFO", &path);
    env.push(b"QUERY_STRING", uri.query().unwrap_or("").as_bytes());
    match (uri.scheme(), uri.path_and_query()) {
        (None, Some(origin_form)) => env.push(b"RAW_URI", origin_form.as_str().as_bytes()),
        _ => env.push(b"RAW_URI", uri.to_string().as_bytes()),
    }
    env.push(b"SERVER_PROTOCOL", protocol_name(parts.version));
    let scheme = forwarded.scheme.unwrap_or(conn.scheme);
    env.push(b"wsgi.url_scheme", scheme.as_bytes());

    let (name, port) = server_name_port(parts, conn, scheme, forwarded.host.as_deref());
    env.push(b"SERVER_NAME", name.as_bytes());
    env.push(b"SERVER_PORT", port.as_bytes());
    if let Some(host) = &forwarded.host {
        env.push(b"HTTP_HOST", host.as_bytes());
    }
    match (&forwarded.client, conn.peer) {
        // The proxy's own port says nothing about the client.
        (Some(client), _) => env.push(b"REMOTE_ADDR", client.as_bytes()),
        (None, Some(peer)) => {
            env.push(b"REMOTE_ADDR", peer.ip().to_canonical().to_string().as_bytes());
            env.push(b"REMOTE_PORT", peer.port().to_string().as_bytes());
        }
        (None, None) => env.push(b"REMOTE_ADDR", b""),
    }

    for name in parts.headers.keys() {
        let key: &[u8] = if name == header::HOST && forwarded.host.is_some() {
            continue;
        } else if name == header::CONTENT_TYPE {
            b"CONTENT_TYPE"
        } else if name == header::CONTENT_LENGTH {
            b"CONTENT_LENGTH"
        } else if name.as_str().contains('_') && underscores != Underscores::Dangerous {
            // `X_Forwarded_For` must not pose as `X-Forwarded-For`.
            match underscores {
                Underscores::Refuse => return Err(EnvironError::Underscore(name.as_str().to_string())),
                _ => continue,
            }
        } else {
            &cgi_name(name)
        };
        push_joined(&mut env, key, name, parts);
    }
    Ok(env.finish())
}

fn protocol_name(version: Version) -> &'static [u8] {
    match version {
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_09 => b"HTTP/0.9",
        _ => b"HTTP/1.1",
    }
}

/// `HTTP_` + the name upper-cased with `-` as `_`.
fn cgi_name(name: &HeaderName) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + name.as_str().len());
    key.extend_from_slice(b"HTTP_");
    key.extend(name.as_str().bytes().map(|b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }));
    key
}

/// Repeated headers become one value: `, ` joins them, except Cookie, whose
/// separator is `; ` (RFC 6265).
fn push_joined(env: &mut PairBlob, key: &[u8], name: &HeaderName, parts: &Parts) {
    let separator: &[u8] = if name == header::COOKIE { b"; " } else { b"," };
    let mut values = parts.headers.get_all(name).iter();
    let first = values.next().map_or(&b""[..], |v| v.as_bytes());
    let rest: Vec<&[u8]> = values.flat_map(|v| [separator, v.as_bytes()]).collect();
    if rest.is_empty() {
        env.push(key, first);
    } else {
        let mut joined = vec![first];
        joined.extend(rest);
        env.push_parts(key, &joined);
    }
}

/// SERVER_NAME and SERVER_PORT: the Host header (or an absolute-form target's
/// authority) when there is one, as gunicorn does, else the listener's address.
fn server_name_port(parts: &Parts, conn: &Conn, scheme: &str, forwarded_host: Option<&str>) -> (String, String) {
    let default_port = if scheme == "https" { "443" } else { "80" };
    let host = forwarded_host
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        let (name, port) = split_host(host);
        return (name.to_string(), port.unwrap_or(default_port).to_string());
    }
    match conn.local {
        Some(addr) => (addr.ip().to_canonical().to_string(), addr.port().to_string()),
        None => ("localhost".into(), default_port.into()),
    }
}

fn split_host(host: &str) -> (&str, Option<&str>) {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':').filter(|p| !p.is_empty())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() => (name, Some(port)),
        Some((name, _)) => (name, None),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pairs;
    use hyper::Request;

    fn environ(req: Request<()>, conn: &Conn) -> Vec<(String, String)> {
        let (parts, ()) = req.into_parts();
        let blob = build(&parts, conn, Underscores::Drop).unwrap();
        pairs(&blob)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.iter().map(|&b| b as char).collect(), v.iter().map(|&b| b as char).collect()))
            .collect()
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn tcp() -> Conn {
        Conn {
            peer: Some("10.1.2.3:5555".parse().unwrap()),
            local: Some("127.0.0.1:8000".parse().unwrap()),
            scheme: "http",
            trusted: false,
        }
    }

    #[test]
    fn cgi_keys() {
        let req = Request::post("/a%20b/%C3%A9?x=%20y&z")
            .header("host", "example.com:8080")
            .header("content-type", "text/plain")
            .header("content-length", "3")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x_forwarded_for", "6.6.6.6")
            .header("user-agent", "t\u{e9}st".as_bytes())
            .body(())
            .unwrap();
        let env = environ(req, &tcp());
        assert_eq!(get(&env, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&env, "PATH_INFO"), Some("/a b/\u{c3}\u{a9}"));
        assert_eq!(get(&env, "QUERY_STRING"), Some("x=%20y&z"));
        assert_eq!(get(&env, "RAW_URI"), Some("/a%20b/%C3%A9?x=%20y&z"));
        assert_eq!(get(&env, "SERVER_NAME"), Some("example.com"));
        assert_eq!(get(&env, "SERVER_PORT"), Some("8080"));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("10.1.2.3"));
        assert_eq!(get(&env, "REMOTE_PORT"), Some("5555"));
        assert_eq!(get(&env, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some("3"));
        assert_eq!(get(&env, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&env, "HTTP_X_MULTI"), Some("1,2"));
        assert_eq!(get(&env, "HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get(&env, "HTTP_X_FORWARDED_FOR"), None);
        assert_eq!(get(&env, "HTTP_USER_AGENT"), Some("t\u{c3}\u{a9}st"));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some("http"));
    }

    #[test]
    fn server_name_fallbacks() {
        let req = Request::get("/").version(Version::HTTP_10).body(()).unwrap();
        let env = environ(req, &tcp());
        assert_eq!((get(&env, "SERVER_NAME"), get(&env, "SERVER_PORT")), (Some("127.0.0.1"), Some("8000")));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some("HTTP/1.0"));

        let unix = Conn { peer: None, local: None, scheme: "http", trusted: false };
        let env = environ(Request::get("/").body(()).unwrap(), &unix);
        assert_eq!((get(&env, "SERVER_NAME"), get(&env, "SERVER_PORT")), (Some("localhost"), Some("80")));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some(""));
        assert_eq!(get(&env, "REMOTE_PORT"), None);

        let env = environ(Request::get("/").header("host", "[::1]:9").body(()).unwrap(), &tcp());
        assert_eq!((get(&env, "SERVER_NAME"), get(&env, "SERVER_PORT")), (Some("[::1]"), Some("9")));
        let env = environ(Request::get("http://h.example/p?q").body(()).unwrap(), &tcp());
        assert_eq!((get(&env, "SERVER_NAME"), get(&env, "SERVER_PORT")), (Some("h.example"), Some("80")));
        assert_eq!(get(&env, "RAW_URI"), Some("http://h.example/p?q"));
    }

    proptest::proptest! {
        /// Any request hyper could hand over gives an environ whose pair blob
        /// splits back into exactly the pairs written, or a typed refusal.
        #[test]
        fn any_request_builds_a_well_formed_environ(
            path in "/[ -~]{0,40}",
            headers in proptest::collection::vec(("[a-z_-]{1,12}", proptest::collection::vec(0x20u8..0xff, 0..40)), 0..12),
        ) {
            let Ok(uri) = path.parse::<hyper::http::Uri>() else { return Ok(()) };
            let mut req = Request::get(uri);
            for (name, value) in &headers {
                if let Ok(value) = hyper::http::HeaderValue::from_bytes(value) {
                    req = req.header(name.as_str(), value);
                }
            }
            let Ok(req) = req.body(()) else { return Ok(()) };
            let (parts, ()) = req.into_parts();
            for policy in [Underscores::Drop, Underscores::Refuse, Underscores::Dangerous] {
                match build(&parts, &tcp(), policy) {
                    Ok(blob) => {
                        let pairs = pairs(&blob).expect("an even number of fields");
                        proptest::prop_assert!(pairs.iter().all(|(k, _)| !k.is_empty()));
                        proptest::prop_assert!(pairs.iter().any(|(k, _)| k == "PATH_INFO"));
                    }
                    Err(EnvironError::NulInPath) => proptest::prop_assert!(path.contains("%00")),
                    Err(EnvironError::Underscore(_)) => proptest::prop_assert_eq!(policy, Underscores::Refuse),
                }
            }
        }
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let req = || {
            Request::get("/p")
                .header("host", "inner:8000")
                .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "shop.example")
                .header("x-forwarded-prefix", "/app/")
                .body(())
                .unwrap()
        };
        let trusted = Conn { trusted: true, ..tcp() };
        let env = environ(req(), &trusted);
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("203.0.113.7"));
        assert_eq!(get(&env, "REMOTE_PORT"), None);
        assert_eq!(get(&env, "wsgi.url_scheme"), Some("https"));
        assert_eq!(get(&env, "HTTP_HOST"), Some("shop.example"));
        assert_eq!((get(&env, "SERVER_NAME"), get(&env, "SERVER_PORT")), (Some("shop.example"), Some("443")));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some("/app"));

        let env = environ(req(), &tcp());
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("10.1.2.3"));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some("http"));
        assert_eq!(get(&env, "HTTP_HOST"), Some("inner:8000"));
        assert_eq!(get(&env, "HTTP_X_FORWARDED_FOR"), Some("6.6.6.6, 203.0.113.7"));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(""));

        let rfc = Request::get("/")
            .header("host", "inner")
            .header("forwarded", "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https;host=\"a.example\"")
            .header("x-forwarded-for", "9.9.9.9")
            .body(())
            .unwrap();
        let env = environ(rfc, &trusted);
        assert_eq!(get(&env, "REMOTE_ADDR"), Some("2001:db8::1"));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some("https"));
        assert_eq!(get(&env, "HTTP_HOST"), Some("a.example"));
    }

    #[test]
    fn trusted_proxies() {
        let only = TrustedProxies::Only(vec!["127.0.0.1".parse().unwrap()]);
        assert!(only.trusts(Some("127.0.0.1:5".parse().unwrap())));
        assert!(only.trusts(Some("[::ffff:127.0.0.1]:5".parse().unwrap())));
        assert!(!only.trusts(Some("10.0.0.1:5".parse().unwrap())));
        assert!(only.trusts(None));
        assert!(TrustedProxies::All.trusts(Some("10.0.0.1:5".parse().unwrap())));
        assert_eq!(node_address("unknown"), None);
        assert_eq!(node_address("_hidden"), None);
        assert_eq!(node_address("192.0.2.1:80"), Some("192.0.2.1".into()));
    }

    #[test]
    fn refuses_nul_in_path() {
        let (parts, ()) = Request::get("/a%00b").body(()).unwrap().into_parts();
        assert_eq!(build(&parts, &tcp(), Underscores::Drop), Err(EnvironError::NulInPath));
    }

    #[test]
    fn underscore_policies() {
        let req = || Request::get("/").header("x_forwarded_for", "6.6.6.6").header("x-forwarded-for", "1.2.3.4");
        let (parts, ()) = req().body(()).unwrap().into_parts();
        assert_eq!(build(&parts, &tcp(), Underscores::Refuse), Err(EnvironError::Underscore("x_forwarded_for".into())));
        let blob = build(&parts, &tcp(), Underscores::Dangerous).unwrap();
        let keys: Vec<_> = pairs(&blob).unwrap().into_iter().filter(|(k, _)| k == "HTTP_X_FORWARDED_FOR").collect();
        assert_eq!(keys.len(), 2);
    }
}
