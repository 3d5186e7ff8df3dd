//! Routes: which cluster serves a request, by host and path prefix.
//!
//! Matching is most specific first: an exact host, then `*.suffix` wildcards (longest suffix first), then
//! `*`; within a host, the longest path prefix that matches wins (plain byte prefix, like HAProxy's
//! `path_beg`). If a host matches but none of its prefixes do, the less specific hosts are tried next.
//! Lookups take no lock and allocate nothing: the host is lowercased into a stack buffer.

use crate::config::RouteConfig;
use std::collections::HashMap;

/// What a matched route says about a request.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix this route matched on.
    pub path_prefix: Box<[u8]>,
    /// Index of the cluster in the snapshot's cluster list.
    pub cluster: usize,
}

/// Routes grouped by host for quick lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<[u8]>, Vec<Route>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(Box<[u8]>, Vec<Route>)>,
    any: Vec<Route>,
}

/// Longest host name considered for exact and wildcard matching (DNS limit).
const MAX_HOST: usize = 255;

impl RouteTable {
    /// Builds the table; `cluster_index` maps a cluster name to its index (validation has checked names).
    pub fn build(routes: &[RouteConfig], cluster_index: impl Fn(&str) -> Option<usize>) -> Self {
        let mut table = RouteTable::default();
        for r in routes {
            let Some(cluster) = cluster_index(&r.cluster) else {
                continue;
            };
            let route = Route {
                path_prefix: r.path_prefix.as_bytes().into(),
                cluster,
            };
            let host = r.host.to_ascii_lowercase();
            if host == "*" {
                table.any.push(route);
            } else if let Some(suffix) = host.strip_prefix('*') {
                let suffix: Box<[u8]> = suffix.as_bytes().into();
                match table.wildcard.iter_mut().find(|(s, _)| *s == suffix) {
                    Some((_, list)) => list.push(route),
                    None => table.wildcard.push((suffix, vec![route])),
                }
            } else {
                table
                    .exact
                    .entry(host.into_bytes().into_boxed_slice())
                    .or_default()
                    .push(route);
            }
        }
        let by_prefix_len = |a: &Route, b: &Route| b.path_prefix.len().cmp(&a.path_prefix.len());
        for list in table.exact.values_mut() {
            list.sort_by(by_prefix_len);
        }
        for (_, list) in table.wildcard.iter_mut() {
            list.sort_by(by_prefix_len);
        }
        table.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table.any.sort_by(by_prefix_len);
        table
    }

    /// The route for a request's authority (`host[:port]`, any case) and path.
    pub fn lookup(&self, authority: Option<&[u8]>, path: &[u8]) -> Option<&Route> {
        let mut lower = [0u8; MAX_HOST];
        let host = authority.and_then(|a| normalize_host(a, &mut lower));
        if let Some(host) = host {
            if let Some(r) = self.exact.get(host).and_then(|l| match_prefix(l, path)) {
                return Some(r);
            }
            for (suffix, list) in &self.wildcard {
                // `*.example.com` matches `a.example.com`, not `example.com` itself.
                if host.len() > suffix.len() && host.ends_with(suffix) {
                    if let Some(r) = match_prefix(list, path) {
                        return Some(r);
                    }
                }
            }
        }
        match_prefix(&self.any, path)
    }
}

fn match_prefix<'a>(routes: &'a [Route], path: &[u8]) -> Option<&'a Route> {
    routes.iter().find(|r| path.starts_with(&r.path_prefix))
}

/// Strips the port and a trailing dot and lowercases into `out`. `None` for names too long to match.
fn normalize_host<'a>(authority: &[u8], out: &'a mut [u8; MAX_HOST]) -> Option<&'a [u8]> {
    let host = if authority.first() == Some(&b'[') {
        // IPv6 literal: keep through the closing bracket.
        match memchr::memchr(b']', authority) {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match memchr::memrchr(b':', authority) {
            Some(colon) => &authority[..colon],
            None => authority,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > MAX_HOST {
        return None;
    }
    let out = &mut out[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, prefix: &str, cluster: &str) -> RouteConfig {
        RouteConfig {
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: cluster.into(),
        }
    }

    fn table() -> RouteTable {
        let routes = vec![
            route("*", "/", "default"),
            route("*", "/static/", "static"),
            route("api.example.com", "/", "api"),
            route("api.example.com", "/v2/", "api2"),
            route("*.example.com", "/", "wild"),
            route("*.eu.example.com", "/", "wild_eu"),
        ];
        let names = ["default", "static", "api", "api2", "wild", "wild_eu"];
        RouteTable::build(&routes, |n| names.iter().position(|x| *x == n))
    }

    fn cluster(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.lookup(host.map(str::as_bytes), path.as_bytes())
            .map(|r| r.cluster)
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table();
        assert_eq!(cluster(&t, Some("api.example.com"), "/x"), Some(2));
        assert_eq!(cluster(&t, Some("API.Example.COM:8080"), "/x"), Some(2));
        assert_eq!(cluster(&t, Some("www.example.com"), "/x"), Some(4));
        assert_eq!(cluster(&t, Some("a.eu.example.com"), "/x"), Some(5));
        assert_eq!(cluster(&t, Some("example.com"), "/x"), Some(0));
        assert_eq!(cluster(&t, None, "/x"), Some(0));
    }

    #[test]
    fn longest_prefix_wins_within_a_host() {
        let t = table();
        assert_eq!(cluster(&t, Some("api.example.com"), "/v2/users"), Some(3));
        assert_eq!(cluster(&t, Some("other.org"), "/static/app.js"), Some(1));
        assert_eq!(cluster(&t, Some("other.org"), "/staticx"), Some(0));
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_back_to_less_specific_hosts() {
        let routes = vec![route("a.test", "/only/", "a"), route("*", "/", "any")];
        let t = RouteTable::build(&routes, |n| if n == "a" { Some(0) } else { Some(1) });
        assert_eq!(cluster(&t, Some("a.test"), "/elsewhere"), Some(1));
        assert_eq!(cluster(&t, Some("a.test"), "/only/x"), Some(0));
    }

    #[test]
    fn no_match_is_none() {
        let routes = vec![route("a.test", "/", "a")];
        let t = RouteTable::build(&routes, |_| Some(0));
        assert_eq!(cluster(&t, Some("b.test"), "/"), None);
        assert_eq!(cluster(&t, Some("a.test."), "/"), Some(0), "trailing dot");
        assert_eq!(cluster(&t, Some("[::1]:80"), "/"), None);
    }
}
