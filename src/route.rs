//! Routes: which cluster serves a request, by host and path prefix.
//!
//! Matching is most specific first: an exact host, then `*.suffix` wildcards (longest suffix first), then
//! `*`; within a host, the longest path prefix that matches wins (plain byte prefix, like HAProxy's
//! `path_beg`), and among routes with the same prefix the first in the file whose method and header
//! conditions hold. If a host matches but none of its routes do, the less specific hosts are tried next.
//! Lookups take no lock and allocate nothing: the host is lowercased into a stack buffer.

use crate::config::{FailoverPolicy, RouteAuthMode, RouteClass, RouteConfig, SessionIdentity};
use std::collections::HashMap;

/// What a matched route says about a request.
#[derive(Debug, Clone)]
pub struct Route {
    /// `"host path_prefix"`, as metrics and logs name the route.
    pub name: Box<str>,
    /// Path prefix this route matched on.
    pub path_prefix: Box<[u8]>,
    /// Index of the cluster in the snapshot's cluster list.
    pub cluster: usize,
    /// Only these methods (exact tokens); empty: any.
    pub methods: Vec<Box<[u8]>>,
    /// Only requests carrying this header (lowercase name).
    pub header: Option<Box<str>>,
    pub class: RouteClass,
    pub session: Option<SessionIdentity>,
    /// QoS priority 0–7.
    pub priority: u8,
    pub on_backend_down: FailoverPolicy,
    /// Who may reach the backend: `None` for anyone (`auth = "none"`).
    pub auth: Option<RouteAuth>,
    /// Indices into the snapshot's `rate_limits`, in the route's order.
    pub rate_limits: Box<[usize]>,
    /// Responses carry the login session's pending notifications (`notifications = true`).
    pub notifications: bool,
    /// Resumable uploads are created on this route's path (`uploads = true`).
    pub uploads: bool,
}

/// A login route's policy (`auth = "login"`).
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// Index of the route's pool in `AuthSettings::pools`.
    pub pool: usize,
    /// The user needs at least one of these roles; empty: any logged-in user.
    pub roles: Box<[Box<str>]>,
    /// The user needs at least one of these groups; empty: no group needed.
    pub groups: Box<[Box<str>]>,
    /// Pass the identity headers and the identity JWT to the backend.
    pub identity: bool,
}

impl Route {
    /// Whether the method and header conditions hold (`has_header` answers for a lowercase name).
    pub fn accepts(&self, method: &[u8], has_header: impl Fn(&str) -> bool) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| **m == *method))
            && self.header.as_deref().is_none_or(has_header)
    }
}

/// Routes grouped by host for quick lookup; the groups hold indexes into `routes`.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<Box<[u8]>, Vec<usize>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(Box<[u8]>, Vec<usize>)>,
    any: Vec<usize>,
}

/// Longest host name considered for exact and wildcard matching (DNS limit).
const MAX_HOST: usize = 255;

impl RouteTable {
    /// Builds the table; `cluster_index` maps a cluster name to its index (validation has checked names),
    /// `pools` lists the pool names in `AuthSettings::pools` order (empty without pools).
    ///
    /// A login route whose pool cannot be found is an error rather than a route left out: left out, its
    /// requests would fall through to a less specific route that may need no login.
    pub fn build(
        routes: &[RouteConfig],
        cluster_index: impl Fn(&str) -> Option<usize>,
        pools: &[&str],
        rate_limits: &[&str],
    ) -> Result<Self, String> {
        let mut table = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            let Some(cluster) = cluster_index(&r.cluster) else {
                continue;
            };
            let auth = match r.auth {
                RouteAuthMode::None => None,
                RouteAuthMode::Login => {
                    Some(route_auth(r, pools).map_err(|e| format!("routes[{i}].pool: {e}"))?)
                }
            };
            let mut limits = Vec::with_capacity(r.rate_limits.len());
            for (j, name) in r.rate_limits.iter().enumerate() {
                let Some(l) = rate_limits.iter().position(|n| n == name) else {
                    return Err(format!(
                        "routes[{i}].rate_limits[{j}]: no rate limit {name:?}"
                    ));
                };
                limits.push(l);
            }
            let route = Route {
                name: format!("{} {}", r.host, r.path_prefix).into(),
                path_prefix: r.path_prefix.as_bytes().into(),
                cluster,
                methods: r.methods.iter().map(|m| m.as_bytes().into()).collect(),
                header: r.header.as_ref().map(|h| h.to_ascii_lowercase().into()),
                class: r.class,
                session: r.session.clone(),
                priority: r.priority.unwrap_or(r.class.default_priority()).min(7),
                on_backend_down: r.on_backend_down,
                auth,
                rate_limits: limits.into(),
                notifications: r.notifications,
                uploads: r.uploads,
            };
            let index = table.routes.len();
            table.routes.push(route);
            let host = r.host.to_ascii_lowercase();
            if host == "*" {
                table.any.push(index);
            } else if let Some(suffix) = host.strip_prefix('*') {
                let suffix: Box<[u8]> = suffix.as_bytes().into();
                match table.wildcard.iter_mut().find(|(s, _)| *s == suffix) {
                    Some((_, list)) => list.push(index),
                    None => table.wildcard.push((suffix, vec![index])),
                }
            } else {
                table
                    .exact
                    .entry(host.into_bytes().into_boxed_slice())
                    .or_default()
                    .push(index);
            }
        }
        // Longest prefix first; a stable sort keeps file order among equal prefixes.
        let routes = std::mem::take(&mut table.routes);
        let by_prefix_len = |i: &usize| std::cmp::Reverse(routes[*i].path_prefix.len());
        for list in table.exact.values_mut() {
            list.sort_by_key(by_prefix_len);
        }
        for (_, list) in table.wildcard.iter_mut() {
            list.sort_by_key(by_prefix_len);
        }
        table.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table.any.sort_by_key(by_prefix_len);
        table.routes = routes;
        Ok(table)
    }

    /// The index of the route for a request's authority (`host[:port]`, any case) and path, among
    /// those whose conditions `accept` holds.
    pub fn lookup(
        &self,
        authority: Option<&[u8]>,
        path: &[u8],
        accept: impl Fn(&Route) -> bool,
    ) -> Option<usize> {
        let mut lower = [0u8; MAX_HOST];
        let host = authority.and_then(|a| normalize_host(a, &mut lower));
        let matching = |list: &'_ [usize]| -> Option<usize> {
            list.iter().copied().find(|&i| {
                let r = &self.routes[i];
                path.starts_with(&r.path_prefix) && accept(r)
            })
        };
        if let Some(host) = host {
            if let Some(i) = self.exact.get(host).and_then(|l| matching(l)) {
                return Some(i);
            }
            for (suffix, list) in &self.wildcard {
                // `*.example.com` matches `a.example.com`, not `example.com` itself.
                if host.len() > suffix.len() && host.ends_with(suffix) {
                    if let Some(i) = matching(list) {
                        return Some(i);
                    }
                }
            }
        }
        matching(&self.any)
    }

    /// The route at `index` (from `lookup`).
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Every route, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// A login route's policy; its pool is the one named, or the only one.
fn route_auth(r: &RouteConfig, pools: &[&str]) -> Result<RouteAuth, String> {
    let pool = match (&r.pool, pools) {
        (Some(name), _) => pools
            .iter()
            .position(|p| p == name)
            .ok_or_else(|| format!("unknown pool `{name}`"))?,
        (None, [_]) => 0,
        (None, []) => return Err("a login route needs a pool and none is defined".to_string()),
        (None, _) => return Err("several pools are defined and the route names none".to_string()),
    };
    let boxed = |names: &[String]| names.iter().map(|n| n.as_str().into()).collect();
    Ok(RouteAuth {
        pool,
        roles: boxed(&r.roles),
        groups: boxed(&r.groups),
        identity: r.identity,
    })
}

/// The host of an authority (`host[:port]` or `[v6][:port]`): without the port and a trailing dot, case kept.
pub(crate) fn host_of(authority: &[u8]) -> &[u8] {
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
    host.strip_suffix(b".").unwrap_or(host)
}

/// Strips the port and a trailing dot and lowercases into `out`. `None` for names too long to match.
fn normalize_host<'a>(authority: &[u8], out: &'a mut [u8; MAX_HOST]) -> Option<&'a [u8]> {
    let host = host_of(authority);
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
        RouteConfig::new(host, prefix, cluster)
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
        RouteTable::build(&routes, |n| names.iter().position(|x| *x == n), &[], &[]).unwrap()
    }

    fn cluster(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.lookup(host.map(str::as_bytes), path.as_bytes(), |_| true)
            .map(|i| t.get(i).unwrap().cluster)
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
        let t = RouteTable::build(
            &routes,
            |n| if n == "a" { Some(0) } else { Some(1) },
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(cluster(&t, Some("a.test"), "/elsewhere"), Some(1));
        assert_eq!(cluster(&t, Some("a.test"), "/only/x"), Some(0));
    }

    #[test]
    fn method_and_header_conditions_pick_among_routes_with_the_same_prefix() {
        let mut write = route("*", "/cart", "secure");
        write.methods = vec!["POST".into(), "PUT".into()];
        let mut authed = route("*", "/cart", "authed");
        authed.header = Some("Authorization".into());
        let routes = vec![write, authed, route("*", "/cart", "plain")];
        let names = ["secure", "authed", "plain"];
        let t =
            RouteTable::build(&routes, |n| names.iter().position(|x| *x == n), &[], &[]).unwrap();
        let pick = |method: &[u8], headers: &[&str]| {
            t.lookup(None, b"/cart/1", |r| {
                r.accepts(method, |h| headers.contains(&h))
            })
            .map(|i| t.get(i).unwrap().cluster)
        };
        assert_eq!(pick(b"POST", &[]), Some(0));
        assert_eq!(pick(b"GET", &["authorization"]), Some(1));
        assert_eq!(pick(b"GET", &[]), Some(2));
        assert_eq!(routes[0].class.default_priority(), 2);
    }

    #[test]
    fn no_match_is_none() {
        let routes = vec![route("a.test", "/", "a")];
        let t = RouteTable::build(&routes, |_| Some(0), &[], &[]).unwrap();
        assert_eq!(cluster(&t, Some("b.test"), "/"), None);
        assert_eq!(cluster(&t, Some("a.test."), "/"), Some(0), "trailing dot");
        assert_eq!(cluster(&t, Some("[::1]:80"), "/"), None);
    }

    #[test]
    fn login_routes_resolve_their_pool() {
        let mut named = route("*", "/mail/", "app");
        named.auth = RouteAuthMode::Login;
        named.pool = Some("mail".into());
        named.roles = vec!["admin".into()];
        named.identity = false;
        let mut default = route("*", "/", "app");
        default.auth = RouteAuthMode::Login;
        let routes = [named, default, route("*", "/pub/", "app")];
        // With one pool, a route naming none gets it.
        let t = RouteTable::build(&routes[1..], |_| Some(0), &["mail"], &[]).unwrap();
        assert_eq!(t.get(0).unwrap().auth.as_ref().unwrap().pool, 0);
        assert!(t.get(1).unwrap().auth.is_none());
        let t = RouteTable::build(&routes[..1], |_| Some(0), &["a", "mail"], &[]).unwrap();
        let a = t.get(0).unwrap().auth.as_ref().unwrap();
        assert_eq!(
            (a.pool, &*a.roles, a.groups.len(), a.identity),
            (1, &[Box::from("admin")][..], 0, false)
        );
        // A login route whose pool is missing is an error, not a route silently left out (its requests would
        // reach a less specific route, perhaps without a login).
        let e = RouteTable::build(&routes[..2], |_| Some(0), &["a", "b"], &[]).unwrap_err();
        assert!(e.starts_with("routes[0].pool: unknown pool `mail`"), "{e}");
        let e = RouteTable::build(&routes[1..2], |_| Some(0), &["a", "b"], &[]).unwrap_err();
        assert!(e.contains("several pools"), "{e}");
        assert!(RouteTable::build(&routes[1..2], |_| Some(0), &[], &[]).is_err());
    }
}
