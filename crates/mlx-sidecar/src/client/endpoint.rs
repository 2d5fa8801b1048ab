//! [`Endpoint`]: where a [`Client`](crate::Client) connects without a supervisor — a
//! `mlx-sidecar serve` daemon, or a worker's own socket — parsed from the forms a user
//! types: `unix:/path` or a path for a Unix socket, `http://host:port` or `host:port` for
//! TCP (plaintext HTTP/2; TLS is not supported).

use std::{fmt, path::PathBuf, str::FromStr};

use crate::Error;

/// Where a daemon or a worker listens. Parse one with [`str::parse`]:
///
/// | string                        | endpoint                  |
/// |-------------------------------|---------------------------|
/// | `unix:/run/x.sock`, `unix:///run/x.sock` | Unix socket `/run/x.sock` |
/// | `/run/x.sock`, `./x.sock`, `x.sock`      | Unix socket at that path  |
/// | `http://127.0.0.1:8080`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` | TCP |
///
/// A string with a `/` or without a `:` is a path; `https://` is refused (no TLS).
///
/// ```
/// use mlx_sidecar::Endpoint;
///
/// let tcp: Endpoint = "localhost:8080".parse()?;
/// assert_eq!(tcp.to_string(), "http://localhost:8080");
/// let unix: Endpoint = "unix:/run/user/1000/mlx-sidecar/daemon.sock".parse()?;
/// assert_eq!(unix, Endpoint::Unix("/run/user/1000/mlx-sidecar/daemon.sock".into()));
/// # Ok::<(), mlx_sidecar::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp {
        /// A host name or IP address; an IPv6 address keeps its brackets (`[::1]`).
        host: String,
        /// The port (not 0).
        port: u16,
    },
}

impl Endpoint {
    /// The default socket of a `mlx-sidecar serve` daemon
    /// ([`daemon::default_socket_path`](crate::daemon::default_socket_path)).
    pub fn default_daemon() -> Endpoint {
        Endpoint::Unix(crate::daemon::default_socket_path())
    }

    /// The `http://host:port` URI of a TCP endpoint.
    pub(crate) fn tcp_uri(host: &str, port: u16) -> String {
        format!("http://{host}:{port}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp { host, port } => f.write_str(&Endpoint::tcp_uri(host, *port)),
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(input: &str) -> Result<Endpoint, Error> {
        let invalid = |reason: &str| Error::InvalidEndpoint {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(path) = input.strip_prefix("unix:") {
            // gRPC's forms: `unix:path` and `unix:///absolute/path`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(invalid("no socket path after `unix:`"));
            }
            return Ok(Endpoint::Unix(path.into()));
        }
        if input.starts_with("https://") {
            return Err(invalid(
                "TLS is not supported: use http:// on a trusted network, or a Unix socket",
            ));
        }
        if let Some(address) = input.strip_prefix("http://") {
            let address = address.strip_suffix('/').unwrap_or(address);
            return host_port(address).ok_or_else(|| invalid("expected http://host:port"));
        }
        if input.contains('/') || !input.contains(':') {
            return Ok(Endpoint::Unix(input.into()));
        }
        host_port(input)
            .ok_or_else(|| invalid("expected host:port, http://host:port, unix:/path or a path"))
    }
}

/// `host:port` (an IPv6 host in brackets), or None.
fn host_port(address: &str) -> Option<Endpoint> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    let plain = !host.is_empty() && !host.contains([':', '[', ']', '/', '@']);
    (bracketed || plain).then(|| Endpoint::Tcp {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    fn parse(s: &str) -> Result<Endpoint, Error> {
        s.parse()
    }

    #[test]
    fn unix_forms() {
        for (input, path) in [
            ("unix:/run/x.sock", "/run/x.sock"),
            ("unix:///run/x.sock", "/run/x.sock"),
            ("unix:rel/x.sock", "rel/x.sock"),
            (
                "/tmp/mlx-sidecar-1000/daemon.sock",
                "/tmp/mlx-sidecar-1000/daemon.sock",
            ),
            ("./daemon.sock", "./daemon.sock"),
            ("daemon.sock", "daemon.sock"),
            // A path may hold a colon when it has a slash.
            ("/odd/na:me.sock", "/odd/na:me.sock"),
        ] {
            assert_eq!(
                parse(input).expect(input),
                Endpoint::Unix(path.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn tcp_forms() {
        for (input, expected) in [
            ("http://127.0.0.1:8080", tcp("127.0.0.1", 8080)),
            ("http://127.0.0.1:8080/", tcp("127.0.0.1", 8080)),
            ("127.0.0.1:8080", tcp("127.0.0.1", 8080)),
            ("localhost:1", tcp("localhost", 1)),
            ("[::1]:65535", tcp("[::1]", 65535)),
            ("http://[::1]:9000", tcp("[::1]", 9000)),
            ("gpu-box.lan:7000", tcp("gpu-box.lan", 7000)),
        ] {
            assert_eq!(parse(input).expect(input), expected, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "unix:/run/x.sock",
            "http://[::1]:9000",
            "http://localhost:80",
        ] {
            let endpoint = parse(input).expect(input);
            assert_eq!(endpoint.to_string(), input);
            assert_eq!(parse(&endpoint.to_string()).expect(input), endpoint);
        }
    }

    #[test]
    fn bad_forms_say_why() {
        for input in [
            "",
            "unix:",
            "https://example.com:443",
            "http://localhost",
            "http://localhost:0",
            "http://:8080",
            "localhost:http",
            "localhost:99999",
            "::1:8080",
            "user@host:22",
        ] {
            let err = parse(input).expect_err(input);
            assert!(
                matches!(&err, Error::InvalidEndpoint { input: i, .. } if i == input),
                "{input}: {err:?}"
            );
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        let tls = parse("https://x:1").expect_err("tls").to_string();
        assert!(tls.contains("TLS is not supported"), "{tls}");
    }
}
