//! The one DNS path of the `http` tool: a `reqwest` resolver that looks a name up once with
//! hickory, checks every answer, and hands the connector only checked addresses.
//!
//! Because the check and the connect use the same answer, a name that rebinds between two
//! lookups (public for the check, 127.0.0.1 for the connect) has nothing to rebind: there is
//! no second lookup. `reqwest` is given this resolver in place of its own, and IP-literal
//! hosts never reach a resolver at all (they are checked in `HttpTool::fetch`).

use super::HttpError;
use super::ranges::{describe, is_forbidden};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Refuses private and reserved addresses, save the operator's exceptions.
#[derive(Debug, Clone)]
pub(crate) struct AddressGuard {
    exceptions: Vec<IpNet>,
}

impl AddressGuard {
    pub(crate) fn new(exceptions: Vec<IpNet>) -> Self {
        Self { exceptions }
    }

    /// `Ok` when `ip` may be reached; otherwise a denial naming the address and its range.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), HttpError> {
        if self.exceptions.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match is_forbidden(ip) {
            None => Ok(()),
            Some(range) => Err(HttpError::Denied(format!(
                "{}: tasks may not reach private or reserved addresses \
                 (an operator can except a range with allow_addresses)",
                describe(ip, range)
            ))),
        }
    }
}

/// Builds the hickory resolver: the system's configuration, or exactly `nameservers`
/// (over UDP, with TCP for truncated answers) when the policy names any.
pub(crate) fn build_resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, HttpError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| HttpError::Net(format!("cannot read the system resolver configuration: {e}")))?
    } else {
        let mut config = ResolverConfig::new();
        for addr in nameservers {
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        let mut builder = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        // The operator named the servers to ask: /etc/hosts is not one of them.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    // Both families, so a name with an AAAA record in a forbidden range cannot hide behind
    // a harmless A record: every address the name has is checked, not just the first.
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(builder.build())
}

/// The resolver handed to `reqwest`: lookup once, check all, return only what was checked.
pub(crate) struct PinnedResolver {
    pub(crate) resolver: TokioResolver,
    pub(crate) guard: Arc<AddressGuard>,
}

impl Resolve for PinnedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.resolver.clone();
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Boxed as the bare `HttpError` (not `Box<HttpError>`), so `fetch` can find it by
            // downcasting through reqwest's error chain and report a denial as a denial.
            let addrs = lookup_checked(&resolver, &guard, &host).await.map_err(|e| Box::new(e) as BoxError)?;
            // Port 0: the connector fills in the URL's port.
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Every address of `host`, or the refusal of the first forbidden one: a name with one
/// private address among public ones is refused whole, since the connector may pick any.
async fn lookup_checked(resolver: &TokioResolver, guard: &AddressGuard, host: &str) -> Result<Vec<IpAddr>, HttpError> {
    let lookup = resolver.lookup_ip(host).await.map_err(|e| HttpError::Net(format!("cannot resolve {host:?}: {e}")))?;
    let addrs: Vec<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err(HttpError::Net(format!("{host:?} has no addresses")));
    }
    for ip in &addrs {
        guard.check(*ip).map_err(|e| match e {
            HttpError::Denied(why) => HttpError::Denied(format!("{host:?} resolves to {why}")),
            other => other,
        })?;
    }
    tracing::debug!(host, ?addrs, "http: resolved and checked");
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_exact_and_family_bound() {
        let guard = AddressGuard::new(vec!["127.0.0.2/32".parse().unwrap(), "10.9.0.0/16".parse().unwrap()]);
        assert!(guard.check("127.0.0.2".parse().unwrap()).is_ok());
        assert!(guard.check("10.9.200.1".parse().unwrap()).is_ok());
        assert!(guard.check("8.8.8.8".parse().unwrap()).is_ok());
        for refused in ["127.0.0.1", "127.0.0.3", "10.10.0.1", "::ffff:127.0.0.2"] {
            let err = guard.check(refused.parse().unwrap()).unwrap_err();
            assert!(matches!(&err, HttpError::Denied(m) if m.contains(refused)), "{refused}: {err}");
        }
    }
}
