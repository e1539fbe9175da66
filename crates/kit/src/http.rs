//! The one HTTP client every service, tool and test uses (reqwest), and the one place where an
//! address someone configured becomes a base URL that paths are joined to.

use std::fmt;
use std::time::Duration;

pub use reqwest::{Client, Method, StatusCode, Url};

/// Why an address or a path does not make a URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("`{address}` is not an HTTP address")]
    NotHttp { address: String },
    #[error("`{address}` is not a valid URL")]
    Invalid {
        address: String,
        #[source]
        source: url::ParseError,
    },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not build the HTTP client")]
pub struct ClientError(#[source] reqwest::Error);

/// A service's base URL, from what an operator wrote: `host:port`, `http://host:port` or
/// `https://host/prefix`, with or without a trailing slash. Paths join below it.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(Url);

impl BaseUrl {
    pub fn parse(address: &str) -> Result<BaseUrl, UrlError> {
        let trimmed = address.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("http://{trimmed}")
        };
        let mut url = Url::parse(&with_scheme).map_err(|source| UrlError::Invalid {
            address: address.to_owned(),
            source,
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(UrlError::NotHttp {
                address: address.to_owned(),
            });
        }
        // A base ends in '/', so that joining "strategies" keeps any prefix path.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        url.set_query(None);
        url.set_fragment(None);
        Ok(BaseUrl(url))
    }

    /// The URL of `path` below this base; a leading '/' is optional and means the same.
    pub fn join(&self, path: &str) -> Url {
        let relative = path.trim_start_matches('/');
        // Joining a relative reference to an http(s) base cannot fail, except for input no
        // caller of ours builds (a path holding a scheme); fall back to appending it then.
        self.0.join(relative).unwrap_or_else(|_| {
            let mut url = self.0.clone();
            url.set_path(&format!("{}{relative}", self.0.path()));
            url
        })
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown without the trailing slash, as operators write it.
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseUrl({})", self.0)
    }
}

/// The client for calls between our processes: Nagle off (small requests and answers), no
/// proxy (the services reach each other directly), connections pooled, and `timeout` for the
/// connect and the whole exchange alike.
pub fn client(timeout: Duration) -> Result<Client, ClientError> {
    Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(ClientError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_once() {
        let cases = [
            ("127.0.0.1:8000", "http://127.0.0.1:8000/strategies/s1"),
            (
                "http://127.0.0.1:8000",
                "http://127.0.0.1:8000/strategies/s1",
            ),
            (
                "http://127.0.0.1:8000/",
                "http://127.0.0.1:8000/strategies/s1",
            ),
            ("  localhost:8000/ ", "http://localhost:8000/strategies/s1"),
            (
                "https://qmtl.example/api",
                "https://qmtl.example/api/strategies/s1",
            ),
            (
                "https://qmtl.example/api/",
                "https://qmtl.example/api/strategies/s1",
            ),
        ];
        for (address, expected) in cases {
            let base = BaseUrl::parse(address).unwrap();
            assert_eq!(base.join("/strategies/s1").as_str(), expected, "{address}");
            assert_eq!(base.join("strategies/s1").as_str(), expected, "{address}");
        }
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:8000/")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8000"
        );
    }

    #[test]
    fn addresses_that_are_not_http_are_refused_with_the_address() {
        for address in ["ftp://h:21", "http://", "", "http://[::1"] {
            let error = BaseUrl::parse(address).unwrap_err();
            assert!(error.to_string().contains(address.trim()), "{error}");
        }
    }

    #[test]
    fn a_query_in_the_base_is_dropped_and_paths_keep_theirs() {
        let base = BaseUrl::parse("http://h:1/?x=1").unwrap();
        assert_eq!(base.join("status?y=2").as_str(), "http://h:1/status?y=2");
    }
}
