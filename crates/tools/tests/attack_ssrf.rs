//! Attack suite for the `http` tool's SSRF defence, against real servers on loopback: an
//! axum server that counts what reaches it, and a scripted DNS server (hickory-proto on a
//! loopback UDP port) that logs every question and can rebind a name between lookups.
//!
//! Two HTTP servers share one port: the *control* on 127.0.0.2, which the policy excepts
//! (`allow_addresses = 127.0.0.2/32`) and which the task may reach, and the *victim* on
//! 127.0.0.1, which it may not. Every attack must fail and the victim must never see a
//! request; the controls show the same tool does reach the control server, so "blocked" is
//! not a broken client. Prints `attack-suite ssrf: N tried, N blocked`.
//!
//! No traffic leaves the machine: every address that could be connected to is on loopback.
//! The literal attacks on other private ranges are only tried once the loopback ones were
//! all refused, so a broken check cannot send a packet to a real 10.x or 169.254.x host.

#[path = "../../../tests/common/tally.rs"]
mod tally;

use tally::Tally;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use machina_tools::http::{HttpError, HttpPolicy, HttpRequest, HttpResponse, HttpTool, is_forbidden};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};

const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const VICTIM_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
const TIMEOUT_MS: u64 = 300;
const CAP_BYTES: usize = 1024;
/// How long the slow handler sleeps: well past TIMEOUT_MS.
const SLOW_MS: u64 = 2_000;

// ---- the HTTP servers ----

struct Mock {
    hits: AtomicUsize,
    /// Where `/redirect` points.
    redirect_to: String,
}

async fn handle(State(mock): State<Arc<Mock>>, req: Request) -> Response {
    mock.hits.fetch_add(1, Ordering::SeqCst);
    match req.uri().path() {
        "/" => "hello from the control server".into_response(),
        "/echo" => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
            let mut response = body.into_response();
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, mock.redirect_to.clone())]).into_response(),
        "/exact" => vec![b'x'; CAP_BYTES].into_response(),
        "/big" => vec![b'x'; 64 * CAP_BYTES].into_response(),
        // Chunked, no Content-Length: the cap must be enforced while reading.
        "/stream" => Body::from_stream(
            futures::stream::iter(0..16_384).map(|_| Ok::<_, Infallible>(Bytes::from_static(&[b'x'; 1024]))),
        )
        .into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
            "too late".into_response()
        }
        // Headers at once, then one byte per 100 ms: only a whole-request timeout stops it.
        "/trickle" => Body::from_stream(futures::stream::unfold(0u32, |n| async move {
            (n < 50).then_some(())?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), n + 1))
        }))
        .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve(listener: TcpListener, redirect_to: String) -> Arc<Mock> {
    let mock = Arc::new(Mock { hits: AtomicUsize::new(0), redirect_to });
    let app = axum::Router::new().fallback(handle).with_state(mock.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    mock
}

/// The control server on 127.0.0.2 and the victim on 127.0.0.1, on one port number, so a
/// name that rebinds from one to the other keeps the URL's port valid for both.
struct Servers {
    port: u16,
    control: Arc<Mock>,
    victim: Arc<Mock>,
}

impl Servers {
    async fn start() -> Self {
        for _ in 0..50 {
            let control = TcpListener::bind((CONTROL_IP, 0)).await.expect("bind 127.0.0.2");
            let port = control.local_addr().unwrap().port();
            let Ok(victim) = TcpListener::bind((VICTIM_IP, port)).await else { continue };
            let victim_url = format!("http://{VICTIM_IP}:{port}/");
            let control = serve(control, victim_url.clone()).await;
            let victim = serve(victim, victim_url).await;
            return Self { port, control, victim };
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    }

    fn control_hits(&self) -> usize {
        self.control.hits.load(Ordering::SeqCst)
    }

    fn victim_hits(&self) -> usize {
        self.victim.hits.load(Ordering::SeqCst)
    }
}

// ---- the DNS server ----

/// What the scripted DNS server answers; `seen` counts earlier questions of the same
/// name and type. `None` is NXDOMAIN; an empty list is NOERROR with no records.
fn script(name: &str, qtype: RecordType, seen: usize) -> Option<Vec<IpAddr>> {
    let v4 = |a: [u8; 4]| vec![IpAddr::from(a)];
    let harmless = || v4(CONTROL_IP.octets());
    Some(match (name, qtype) {
        ("control.allowed.test" | "sub.example.com", RecordType::A) => harmless(),
        // Would be harmless if they were ever asked: the allowlist must refuse them first.
        ("evil-example.com" | "example.com" | "example.com.evil.test" | "control.elsewhere.test", RecordType::A) => {
            harmless()
        }
        ("loopback.allowed.test", RecordType::A) => v4([127, 0, 0, 1]),
        ("metadata.allowed.test", RecordType::A) => v4([169, 254, 169, 254]),
        ("mixed.allowed.test", RecordType::A) => vec![CONTROL_IP.into(), VICTIM_IP.into()],
        ("mapped.allowed.test", RecordType::A) => harmless(),
        ("mapped.allowed.test", RecordType::AAAA) => vec!["::ffff:127.0.0.1".parse().unwrap()],
        // Rebinding: harmless for the first question, the victim for every later one.
        ("rebind.allowed.test", RecordType::A) if seen == 0 => harmless(),
        ("rebind.allowed.test", RecordType::A) => v4([127, 0, 0, 1]),
        (n, _) if n.ends_with(".test") || n.ends_with("example.com") => Vec::new(),
        _ => return None,
    })
}

type QueryLog = Arc<Mutex<Vec<(String, RecordType)>>>;

struct Dns {
    addr: SocketAddr,
    log: QueryLog,
}

impl Dns {
    async fn start() -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let log = QueryLog::default();
        let server_log = log.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                let Ok(question) = Message::from_vec(&buf[..n]) else { continue };
                let reply = answer(&question, &server_log);
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        Self { addr, log }
    }

    /// How many questions of this type were asked about `name`.
    fn asked(&self, name: &str, qtype: RecordType) -> usize {
        self.log.lock().unwrap().iter().filter(|(n, t)| n == name && *t == qtype).count()
    }

    /// How many questions of any type were asked about `name`.
    fn asked_any(&self, name: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|(n, _)| n == name).count()
    }
}

fn answer(question: &Message, log: &QueryLog) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(question.id())
        .set_message_type(MessageType::Response)
        .set_op_code(question.op_code())
        .set_recursion_desired(question.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    for query in question.queries() {
        reply.add_query(query.clone());
        let name = query.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let qtype = query.query_type();
        let seen = {
            let mut log = log.lock().unwrap();
            let seen = log.iter().filter(|(n, t)| *n == name && *t == qtype).count();
            log.push((name.clone(), qtype));
            seen
        };
        match script(&name, qtype, seen) {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some(addrs) => {
                for ip in addrs {
                    let rdata = match ip {
                        IpAddr::V4(v4) if qtype == RecordType::A => RData::A(A(v4)),
                        IpAddr::V6(v6) if qtype == RecordType::AAAA => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    // TTL 0: nothing may be cached, so a second lookup would see the rebind.
                    reply.add_answer(Record::from_rdata(query.name().clone(), 0, rdata));
                }
            }
        }
    }
    reply
}

// ---- helpers ----

/// The suite's policy: `*.allowed.test` and `*.example.com` under default-deny, the control
/// server's address excepted, short limits.
fn policy(dns: &Dns) -> HttpPolicy {
    HttpPolicy {
        allow_hosts: vec!["*.allowed.test".into(), "*.example.com".into()],
        default_deny: true,
        allow_addresses: vec![format!("{CONTROL_IP}/32").parse().unwrap()],
        timeout: Duration::from_millis(TIMEOUT_MS),
        max_response_bytes: CAP_BYTES,
        max_request_bytes: CAP_BYTES,
        nameservers: vec![dns.addr],
    }
}

/// The same, but any host allowed: the address check alone must stop literals.
fn open_policy(dns: &Dns) -> HttpPolicy {
    HttpPolicy { default_deny: false, ..policy(dns) }
}

fn get(url: impl Into<String>) -> HttpRequest {
    HttpRequest { method: "GET".into(), url: url.into(), body: None, content_type: None }
}

fn show(result: &Result<HttpResponse, HttpError>) -> String {
    match result {
        Ok(r) => format!("HTTP {} from {} ({} bytes)", r.status, r.remote, r.body.len()),
        Err(e) => format!("{} {e}", e.kind()),
    }
}

fn denied(result: &Result<HttpResponse, HttpError>) -> bool {
    matches!(result, Err(HttpError::Denied(_)))
}

fn refused_as_invalid_or_denied(result: &Result<HttpResponse, HttpError>) -> bool {
    matches!(result, Err(e @ (HttpError::Invalid(_) | HttpError::Denied(_))) if e.kind() == "POLICY_DENIED")
}

// ---- the attacks ----

/// Literal addresses on loopback, in every spelling: the victim listens on 127.0.0.1.
async fn loopback_literals(s: &Servers, open: &HttpTool, t: &mut Tally) -> bool {
    let p = s.port;
    let urls = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://127.0.0.3:{p}/"),
        format!("http://0.0.0.0:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://[::1]:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://017700000001:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[::ffff:7f00:1]:{p}/"),
        // The mapped form of the *excepted* address is refused too: exceptions are exact.
        format!("http://[::ffff:127.0.0.2]:{p}/"),
        format!("http://[::127.0.0.1]:{p}/"),
        format!("http://[64:ff9b::7f00:1]:{p}/"),
        format!("http://[2002:7f00:1::]:{p}/"),
    ];
    let mut all_blocked = true;
    for url in urls {
        let (victim, control) = (s.victim_hits(), s.control_hits());
        let r = open.fetch(&get(&url)).await;
        let blocked = denied(&r) && s.victim_hits() == victim && s.control_hits() == control;
        all_blocked &= blocked;
        t.attack(&format!("literal {url}"), blocked, show(&r));
    }
    all_blocked
}

/// One address in every other private or reserved block, as a literal. Only tried when the
/// loopback literals were all refused (see the module docs).
async fn other_literals(open: &HttpTool, safe_to_try: bool, t: &mut Tally) {
    let hosts = [
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.0.1",
        "192.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "0.1.2.3",
        "[fe80::1]",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "[ff02::1]",
        "[2001:db8::1]",
        "[3fff::1]",
        "[fec0::1]",
        "[2001::1]",
        "[100::1]",
        "[64:ff9b::a00:1]",
    ];
    for host in hosts {
        let url = format!("http://{host}:8080/latest/meta-data/");
        let ip: IpAddr = host.trim_matches(['[', ']']).parse().unwrap();
        if !safe_to_try || is_forbidden(ip).is_none() {
            t.attack(&format!("literal {url}"), false, "not tried: the address check is already broken");
            continue;
        }
        let r = open.fetch(&get(&url)).await;
        let named = matches!(&r, Err(HttpError::Denied(m)) if m.contains(&ip.to_string()));
        t.attack(&format!("literal {url}"), named, show(&r));
    }
}

async fn shape_attacks(s: &Servers, open: &HttpTool, t: &mut Tally) {
    let p = s.port;
    let urls = [
        "file:///etc/passwd".to_string(),
        format!("gopher://{CONTROL_IP}:{p}/_GET%20/%20HTTP/1.0"),
        format!("ftp://{CONTROL_IP}:{p}/"),
        format!("dict://{CONTROL_IP}:{p}/info"),
        // Userinfo on an otherwise reachable target: refused for the userinfo alone.
        format!("http://user:secret@{CONTROL_IP}:{p}/"),
        format!("http://{CONTROL_IP}:{p}@{VICTIM_IP}:{p}/"),
    ];
    for url in urls {
        let before = (s.victim_hits(), s.control_hits());
        let r = open.fetch(&get(&url)).await;
        let blocked = refused_as_invalid_or_denied(&r) && (s.victim_hits(), s.control_hits()) == before;
        t.attack(&format!("url {url}"), blocked, show(&r));
    }
    let before = s.control_hits();
    let put = HttpRequest { method: "PUT".into(), ..get(format!("http://{CONTROL_IP}:{p}/")) };
    let r = open.fetch(&put).await;
    t.attack("method PUT", refused_as_invalid_or_denied(&r) && s.control_hits() == before, show(&r));
}

/// Names the allowlist must refuse before they are ever looked up.
async fn allowlist_attacks(s: &Servers, dns: &Dns, tool: &HttpTool, t: &mut Tally) {
    for name in ["control.elsewhere.test", "evil-example.com", "example.com", "example.com.evil.test"] {
        let before = s.control_hits();
        let r = tool.fetch(&get(format!("http://{name}:{}/", s.port))).await;
        let blocked = denied(&r) && dns.asked_any(name) == 0 && s.control_hits() == before;
        t.attack(
            &format!("host off the allowlist: {name}"),
            blocked,
            format!("{}; DNS asked {}", show(&r), dns.asked_any(name)),
        );
    }
}

async fn dns_attacks(s: &Servers, dns: &Dns, tool: &HttpTool, t: &mut Tally) {
    let p = s.port;
    let mut loopback_refused = true;
    for (name, spelled) in [
        ("loopback.allowed.test", "loopback.allowed.test"),
        ("loopback.allowed.test", "LOOPBACK.Allowed.Test."),
        ("mixed.allowed.test", "mixed.allowed.test"),
        ("mapped.allowed.test", "mapped.allowed.test"),
    ] {
        let before = (s.victim_hits(), s.control_hits());
        let r = tool.fetch(&get(format!("http://{spelled}:{p}/"))).await;
        let blocked = matches!(&r, Err(HttpError::Denied(m)) if m.contains("127.0.0.1"))
            && (s.victim_hits(), s.control_hits()) == before
            && dns.asked_any(name) > 0;
        loopback_refused &= blocked;
        t.attack(&format!("DNS name to a forbidden address: {spelled}"), blocked, show(&r));
    }
    if loopback_refused {
        let r = tool.fetch(&get("http://metadata.allowed.test/latest/meta-data/")).await;
        let blocked = matches!(&r, Err(HttpError::Denied(m)) if m.contains("169.254.169.254"));
        t.attack("DNS name to cloud metadata", blocked, show(&r));
    } else {
        t.attack("DNS name to cloud metadata", false, "not tried: the loopback name got through");
    }

    // Rebinding: the first answer is the excepted control server, every later one the
    // victim. A tool that checks one lookup and connects with another reaches the victim.
    let before = s.victim_hits();
    let r = tool.fetch(&get(format!("http://rebind.allowed.test:{p}/"))).await;
    let asked = dns.asked("rebind.allowed.test", RecordType::A);
    let pinned = match &r {
        Ok(resp) => resp.remote.ip() == IpAddr::V4(CONTROL_IP),
        Err(e) => matches!(e, HttpError::Net(_) | HttpError::Timeout(_)),
    };
    let blocked = pinned && asked == 1 && s.victim_hits() == before;
    t.attack("DNS rebinding between check and connect", blocked, format!("{}; A asked {asked} time(s)", show(&r)));
}

async fn redirect_attack(s: &Servers, tool: &HttpTool, t: &mut Tally) {
    let before = s.victim_hits();
    let r = tool.fetch(&get(format!("http://control.allowed.test:{}/redirect", s.port))).await;
    let location = r.as_ref().ok().and_then(|resp| resp.headers.iter().find(|(n, _)| n == "location").cloned());
    let returned_as_is = matches!(&r, Ok(resp) if resp.status == 302)
        && location.as_ref().is_some_and(|(_, v)| *v == s.control.redirect_to);
    let blocked = returned_as_is && s.victim_hits() == before;
    t.attack("redirect from an allowed target to 127.0.0.1", blocked, format!("{}; {location:?}", show(&r)));
}

async fn limit_attacks(s: &Servers, tool: &HttpTool, t: &mut Tally) {
    let url = |path: &str| format!("http://control.allowed.test:{}{path}", s.port);
    for path in ["/big", "/stream"] {
        let started = Instant::now();
        let r = tool.fetch(&get(url(path))).await;
        let blocked = matches!(&r, Err(HttpError::TooLarge(_))) && r.as_ref().unwrap_err().kind() == "POLICY_DENIED";
        t.attack(
            &format!("response over the cap ({path})"),
            blocked,
            format!("{} after {:?}", show(&r), started.elapsed()),
        );
    }
    for path in ["/slow", "/trickle"] {
        let started = Instant::now();
        let r = tool.fetch(&get(url(path))).await;
        let elapsed = started.elapsed();
        let blocked = matches!(&r, Err(HttpError::Timeout(_))) && elapsed < Duration::from_millis(SLOW_MS);
        t.attack(&format!("slow response ({path})"), blocked, format!("{} after {elapsed:?}", show(&r)));
    }
    let before = s.control_hits();
    let post = HttpRequest {
        method: "POST".into(),
        url: url("/echo"),
        body: Some(vec![b'x'; CAP_BYTES + 1]),
        content_type: Some("text/plain".into()),
    };
    let r = tool.fetch(&post).await;
    let blocked = matches!(&r, Err(HttpError::TooLarge(_))) && s.control_hits() == before;
    t.attack("request body over the cap", blocked, show(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_suite() {
    let servers = Servers::start().await;
    let dns = Dns::start().await;
    let tool = HttpTool::new(policy(&dns)).unwrap();
    let open = HttpTool::new(open_policy(&dns)).unwrap();
    let mut t = Tally::default();
    let started = Instant::now();

    let loopback_refused = loopback_literals(&servers, &open, &mut t).await;
    other_literals(&open, loopback_refused, &mut t).await;
    shape_attacks(&servers, &open, &mut t).await;
    allowlist_attacks(&servers, &dns, &tool, &mut t).await;
    dns_attacks(&servers, &dns, &tool, &mut t).await;
    redirect_attack(&servers, &tool, &mut t).await;
    limit_attacks(&servers, &tool, &mut t).await;

    println!("victim requests: {}; suite took {:?}", servers.victim_hits(), started.elapsed());
    assert_eq!(servers.victim_hits(), 0, "the victim server was reached");
    t.finish("ssrf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_the_tool_reaches_an_allowed_target() {
    let s = Servers::start().await;
    let dns = Dns::start().await;
    let tool = HttpTool::new(policy(&dns)).unwrap();
    let p = s.port;

    let r = tool.fetch(&get(format!("http://control.allowed.test:{p}/"))).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello from the control server"[..]));
    assert_eq!(r.remote, SocketAddr::from((CONTROL_IP, p)));
    assert_eq!(dns.asked("control.allowed.test", RecordType::A), 1);

    let post = HttpRequest {
        method: "POST".into(),
        url: format!("http://control.allowed.test:{p}/echo"),
        body: Some(br#"{"q":1}"#.to_vec()),
        content_type: Some("application/json".into()),
    };
    let r = tool.fetch(&post).await.unwrap();
    assert_eq!(r.body, br#"{"q":1}"#);
    assert!(r.headers.contains(&("content-type".into(), "application/json".into())), "{:?}", r.headers);

    // A body of exactly the cap is fine; the cap is "more than", not "at least".
    let r = tool.fetch(&get(format!("http://sub.example.com:{p}/exact"))).await.unwrap();
    assert_eq!(r.body.len(), CAP_BYTES);

    // The excepted address as a literal, under the open policy.
    let open = HttpTool::new(open_policy(&dns)).unwrap();
    let r = open.fetch(&get(format!("http://{CONTROL_IP}:{p}/"))).await.unwrap();
    assert_eq!(r.status, 200);

    // Names that do not exist are a network failure, not a hang or a denial.
    let err = tool.fetch(&get(format!("http://missing.allowed.test:{p}/"))).await.unwrap_err();
    assert_eq!(err.kind(), "NET_FAIL", "{err}");

    assert_eq!(s.control_hits(), 4);
    assert_eq!(s.victim_hits(), 0);
}
