//! The `http` tool: GET and POST on behalf of a hostile task, with an SSRF defence.
//!
//! A request passes, in order: the method and URL shape (http/https only, no userinfo);
//! the host allowlist, before any DNS lookup; for an IP-literal host, the address check;
//! for a name, one hickory lookup whose every answer is checked, the connection then going
//! only to those checked addresses (the `resolve` submodule). Redirects are returned to the
//! task, never followed; the whole exchange (lookup, connect, headers, body) runs under one
//! timeout; the body is read as a stream and refused as soon as it passes the cap; no
//! connection is kept for reuse, so every request connects to addresses checked for it.
//!
//! Error kinds (`HttpError::kind`) are [`machina_core::ErrCode`] strings, so the worker
//! records them as they are:
//!
//! | variant    | kind            | why that code                                            |
//! |------------|-----------------|----------------------------------------------------------|
//! | `Denied`   | `POLICY_DENIED` | the policy forbids the host or one of its addresses      |
//! | `Invalid`  | `POLICY_DENIED` | a method, scheme, URL or argv the tool does not take, as for a bad shell argv |
//! | `TooLarge` | `POLICY_DENIED` | a body over the policy's cap: deterministic, so not worth the retry `NET_FAIL` gets |
//! | `Net`      | `NET_FAIL`      | DNS, connect, TLS or transfer failure: infrastructure, retried by default |
//! | `Timeout`  | `TIMEOUT`       | no complete response within `HttpPolicy::timeout`        |

mod allow;
mod argv;
mod ranges;
mod resolve;

pub use argv::request_from_argv;
pub use ranges::is_forbidden;

use allow::{HostList, canonical};
use machina_core::ErrCode;
use machina_core::error::error_chain as chain;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use resolve::{AddressGuard, PinnedResolver};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// Default for [`HttpPolicy::timeout`], in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Default for [`HttpPolicy::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 << 20;
/// Default for [`HttpPolicy::max_request_bytes`].
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;

/// What a task may reach over HTTP, and how much it may move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Hosts a task may name: exact names or IP literals, or `*.example.com` (any name
    /// strictly below example.com, not example.com itself). Case-insensitive, trailing dot
    /// ignored.
    pub allow_hosts: Vec<String>,
    /// `true`: a host not on `allow_hosts` is refused. `false`: any host is allowed (its
    /// addresses are still checked).
    pub default_deny: bool,
    /// Operator exceptions to the private/reserved check (e.g. an internal service).
    pub allow_addresses: Vec<ipnet::IpNet>,
    /// Limit on the whole request: lookup, connect, headers and body.
    pub timeout: Duration,
    /// Response bodies larger than this are an error, not silently truncated.
    pub max_response_bytes: usize,
    /// Request bodies larger than this are refused before anything is sent.
    pub max_request_bytes: usize,
    /// DNS servers to ask (UDP, TCP for truncated answers); empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
}

impl Default for HttpPolicy {
    /// Safe defaults: nothing allowed until the operator lists hosts.
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            default_deny: true,
            allow_addresses: Vec::new(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            nameservers: Vec::new(),
        }
    }
}

/// One request as a task asked for it (see [`request_from_argv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET` or `POST` (case-insensitive).
    pub method: String,
    /// An absolute `http` or `https` URL without userinfo.
    pub url: String,
    /// The POST body; a GET takes none.
    pub body: Option<Vec<u8>>,
    /// The POST body's Content-Type.
    pub content_type: Option<String>,
}

/// What came back. A redirect is returned as it is (status and `Location`), not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers in order; values that are not UTF-8 are decoded lossily.
    pub headers: Vec<(String, String)>,
    /// The whole body (at most `max_response_bytes`).
    pub body: Vec<u8>,
    /// The checked address the connection went to.
    pub remote: SocketAddr,
}

/// Why a request was refused or failed; `kind()` is an [`ErrCode`] string (see the module
/// docs for the mapping).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The policy forbids the host or one of its addresses.
    #[error("http request denied: {0}")]
    Denied(String),
    /// The request is malformed: method, URL, scheme, userinfo, header or argv shape.
    #[error("invalid http request: {0}")]
    Invalid(String),
    /// DNS, connect, TLS or transfer failure.
    #[error("http request failed: {0}")]
    Net(String),
    /// The request did not complete within the policy's timeout.
    #[error("http request timed out: {0}")]
    Timeout(String),
    /// A request or response body over the policy's cap.
    #[error("http body too large: {0}")]
    TooLarge(String),
}

impl HttpError {
    /// The [`ErrCode`] the worker records for this error.
    pub fn err_code(&self) -> ErrCode {
        match self {
            Self::Denied(_) | Self::Invalid(_) | Self::TooLarge(_) => ErrCode::PolicyDenied,
            Self::Net(_) => ErrCode::NetFail,
            Self::Timeout(_) => ErrCode::Timeout,
        }
    }

    /// The stable kind string: the [`ErrCode`] name (`POLICY_DENIED`, `NET_FAIL`, `TIMEOUT`).
    pub fn kind(&self) -> &'static str {
        self.err_code().as_str()
    }
}

/// The `http` tool, built once per worker from its policy: the resolver, the checks and a
/// `reqwest` client that can only connect to checked addresses.
#[derive(Debug)]
pub struct HttpTool {
    policy: HttpPolicy,
    hosts: HostList,
    guard: Arc<AddressGuard>,
    client: reqwest::Client,
}

impl HttpTool {
    /// Validates the policy and builds the client. Reads the resolver configuration (and TLS
    /// roots) from disk, so call it once at start-up, not per request.
    pub fn new(policy: HttpPolicy) -> Result<Self, HttpError> {
        if policy.timeout.is_zero() {
            return Err(HttpError::Invalid("the http timeout must be more than zero".into()));
        }
        let hosts = HostList::new(&policy.allow_hosts, policy.default_deny)?;
        let guard = Arc::new(AddressGuard::new(policy.allow_addresses.clone()));
        let resolver = resolve::build_resolver(&policy.nameservers)?;
        let client = reqwest::Client::builder()
            // Our resolver is the only way from a name to an address; environment proxies
            // would move the connect (and the lookup) out of our hands.
            .dns_resolver(Arc::new(PinnedResolver { resolver, guard: guard.clone() }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // No idle connections: a connection made for one request's checked addresses is
            // never picked up by a later request whose name now resolves elsewhere.
            .pool_max_idle_per_host(0)
            .referer(false)
            .timeout(policy.timeout)
            .user_agent(concat!("machina-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Net(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(Self { policy, hosts, guard, client })
    }

    /// The policy this tool enforces.
    pub fn policy(&self) -> &HttpPolicy {
        &self.policy
    }

    /// Runs one request under the policy.
    pub async fn fetch(&self, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = self.prepare(req)?;
        let target = request.url().to_string();
        let limit = self.policy.timeout;
        match tokio::time::timeout(limit, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => {
                Err(HttpError::Timeout(format!("{target}: no complete response within {} ms", limit.as_millis())))
            }
        }
    }

    /// Every check that needs no network: shape, scheme, userinfo, allowlist, literal address.
    fn prepare(&self, req: &HttpRequest) -> Result<reqwest::Request, HttpError> {
        let method = match req.method.to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            other => return Err(HttpError::Invalid(format!("method {other:?} is not allowed (only GET and POST)"))),
        };
        let url = Url::parse(&req.url).map_err(|e| HttpError::Invalid(format!("{:?} is not a URL: {e}", req.url)))?;
        check_url_shape(&url)?;
        let host = url.host().ok_or_else(|| HttpError::Invalid(format!("{url} has no host")))?;
        if !self.hosts.permits(&host) {
            return Err(HttpError::Denied(format!(
                "host {:?} is not on the http allowlist (allow_hosts); ask the operator to add it",
                canonical(&host)
            )));
        }
        // A literal goes straight to the connector, never through the resolver: check it here.
        match host {
            Host::Ipv4(ip) => self.guard.check(ip.into())?,
            Host::Ipv6(ip) => self.guard.check(ip.into())?,
            Host::Domain(_) => {}
        }
        let mut builder = self.client.request(method.clone(), url.clone());
        match (&method, &req.body, &req.content_type) {
            (&reqwest::Method::GET, None, None) => {}
            (&reqwest::Method::GET, _, _) => {
                return Err(HttpError::Invalid("a GET takes no body and no content type".into()));
            }
            (_, body, content_type) => {
                let body = body.clone().unwrap_or_default();
                if body.len() > self.policy.max_request_bytes {
                    return Err(HttpError::TooLarge(format!(
                        "request body of {} bytes is over the {}-byte limit (max_request_bytes)",
                        body.len(),
                        self.policy.max_request_bytes
                    )));
                }
                if let Some(content_type) = content_type {
                    let value = HeaderValue::from_str(content_type).map_err(|_| {
                        HttpError::Invalid(format!("content type {content_type:?} is not a header value"))
                    })?;
                    builder = builder.header(CONTENT_TYPE, value);
                }
                builder = builder.body(body);
            }
        }
        builder.build().map_err(|e| HttpError::Invalid(format!("cannot build a request for {url}: {}", chain(&e))))
    }

    /// Connects (through [`PinnedResolver`]), sends, and reads the body under the cap.
    async fn exchange(&self, request: reqwest::Request) -> Result<HttpResponse, HttpError> {
        let mut response = self.client.execute(request).await.map_err(from_reqwest)?;
        let remote =
            response.remote_addr().ok_or_else(|| HttpError::Net("the connection reported no peer address".into()))?;
        // A tripwire, not the defence (the request is already sent): literals were checked in
        // `prepare` and the resolver hands out only checked addresses. Should another path
        // ever connect elsewhere (a future reqwest default, a proxy), the task still gets
        // nothing from it and the error names the address.
        self.guard.check(remote.ip())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let cap = self.policy.max_response_bytes;
        let too_large =
            |what: String| HttpError::TooLarge(format!("{what} is over the {cap}-byte limit (max_response_bytes)"));
        if let Some(declared) = response.content_length()
            && declared > cap as u64
        {
            return Err(too_large(format!("response body of {declared} bytes (Content-Length)")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
            if body.len() + chunk.len() > cap {
                // Returning drops the response and with it the connection: nothing more is read.
                return Err(too_large(format!("response body of more than {} bytes", body.len() + chunk.len())));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body, remote })
    }
}

fn check_url_shape(url: &Url) -> Result<(), HttpError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::Invalid(format!("scheme {:?} is not allowed (only http and https)", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HttpError::Invalid(
            "a URL with userinfo (user:password@) is not allowed; send credentials another way".into(),
        ));
    }
    Ok(())
}

/// Maps a `reqwest` failure, recovering our own refusal when the resolver raised it.
fn from_reqwest(err: reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(ours) = e.downcast_ref::<HttpError>() {
            return ours.clone();
        }
        source = e.source();
    }
    if err.is_timeout() { HttpError::Timeout(chain(&err)) } else { HttpError::Net(chain(&err)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(policy: HttpPolicy) -> HttpTool {
        // A nameserver that is never asked: every request below is refused before DNS.
        HttpTool::new(HttpPolicy { nameservers: vec!["127.0.0.1:9".parse().unwrap()], ..policy }).unwrap()
    }

    fn get(url: &str) -> HttpRequest {
        HttpRequest { method: "GET".into(), url: url.into(), body: None, content_type: None }
    }

    #[test]
    fn kinds_are_err_codes() {
        for (err, code) in [
            (HttpError::Denied(String::new()), "POLICY_DENIED"),
            (HttpError::Invalid(String::new()), "POLICY_DENIED"),
            (HttpError::TooLarge(String::new()), "POLICY_DENIED"),
            (HttpError::Net(String::new()), "NET_FAIL"),
            (HttpError::Timeout(String::new()), "TIMEOUT"),
        ] {
            assert_eq!(err.kind(), code);
            assert_eq!(code.parse::<ErrCode>().unwrap(), err.err_code());
        }
    }

    #[test]
    fn the_url_crate_normalises_numeric_ipv4_spellings() {
        for spelling in
            ["http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://0177.0.0.1/", "http://127.1/"]
        {
            let url = Url::parse(spelling).unwrap();
            assert_eq!(url.host(), Some(Host::Ipv4([127, 0, 0, 1].into())), "{spelling}");
        }
    }

    #[tokio::test]
    async fn shape_checks_come_first() {
        let t = tool(HttpPolicy { default_deny: false, ..HttpPolicy::default() });
        for (url, needle) in [
            ("file:///etc/passwd", "scheme"),
            ("gopher://example.com/", "scheme"),
            ("ftp://example.com/", "scheme"),
            ("http://user:pw@example.com/", "userinfo"),
            ("http://user@example.com/", "userinfo"),
            ("not a url", "not a URL"),
            ("/relative", "not a URL"),
        ] {
            let err = t.fetch(&get(url)).await.unwrap_err();
            assert!(matches!(&err, HttpError::Invalid(m) if m.contains(needle)), "{url}: {err:?}");
        }
        let mut put = get("http://example.com/");
        put.method = "PUT".into();
        assert!(matches!(t.fetch(&put).await, Err(HttpError::Invalid(_))));
        let mut get_with_body = get("http://example.com/");
        get_with_body.body = Some(b"x".to_vec());
        assert!(matches!(t.fetch(&get_with_body).await, Err(HttpError::Invalid(_))));
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_dns() {
        let t = tool(HttpPolicy { default_deny: false, ..HttpPolicy::default() });
        for url in
            ["http://127.0.0.1/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/"]
        {
            let err = t.fetch(&get(url)).await.unwrap_err();
            assert!(matches!(&err, HttpError::Denied(m) if m.contains("address")), "{url}: {err:?}");
        }
    }

    #[tokio::test]
    async fn the_allowlist_is_checked_before_any_lookup() {
        let t = tool(HttpPolicy { allow_hosts: vec!["*.example.com".into()], ..HttpPolicy::default() });
        let err = t.fetch(&get("https://evil-example.com/")).await.unwrap_err();
        assert!(matches!(&err, HttpError::Denied(m) if m.contains("\"evil-example.com\" is not on")), "{err:?}");
    }

    #[tokio::test]
    async fn request_bodies_over_the_cap_are_refused() {
        let t = tool(HttpPolicy { default_deny: false, max_request_bytes: 4, ..HttpPolicy::default() });
        let post = HttpRequest {
            method: "POST".into(),
            url: "http://example.com/".into(),
            body: Some(b"12345".to_vec()),
            content_type: None,
        };
        assert!(matches!(t.fetch(&post).await, Err(HttpError::TooLarge(m)) if m.contains("max_request_bytes")));
        let injected = HttpRequest { body: Some(b"1".to_vec()), content_type: Some("a\r\nX-Evil: 1".into()), ..post };
        assert!(matches!(t.fetch(&injected).await, Err(HttpError::Invalid(_))));
    }

    #[test]
    fn a_tool_can_be_built_outside_a_runtime() {
        tool(HttpPolicy::default());
    }

    #[test]
    fn bad_policies_are_refused() {
        let zero = HttpPolicy { timeout: Duration::ZERO, ..HttpPolicy::default() };
        assert!(matches!(HttpTool::new(zero), Err(HttpError::Invalid(_))));
        let bad_host = HttpPolicy { allow_hosts: vec!["a.*.b".into()], ..HttpPolicy::default() };
        assert!(matches!(HttpTool::new(bad_host), Err(HttpError::Invalid(_))));
    }
}
