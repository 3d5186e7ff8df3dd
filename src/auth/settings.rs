//! The login configuration compiled for the request path: `[auth]` and `[pools.NAME]` with durations in
//! seconds, users files and the login template read, upstream addresses resolved.
//!
//! Built with every [`crate::snapshot::ConfigSnapshot`], so a reload reads users files and the template
//! again; a file that no longer loads fails the build and the running snapshot stays. Validation
//! (`config::validate::auth`) has checked every key already; the errors here are about files changed or
//! names that stopped resolving since, and name the key like validation does.

use crate::auth::identity::IdentityHeaderNames;
use crate::auth::login_form::LoginTemplate;
use crate::auth::password::PasswordRules;
use crate::auth::users::UsersFile;
use crate::config::{AuthConfig, Config, PoolConfig, UpstreamAuthConfig};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// `[auth]` and its pools, ready for the request path.
#[derive(Debug)]
pub struct AuthSettings {
    /// Name of the sealed login-session cookie.
    pub cookie: Box<str>,
    /// Seconds a login session may go unused.
    pub idle_timeout: u32,
    /// Seconds a login session lasts at most from its login.
    pub max_lifetime: u32,
    /// Seconds an access token lives.
    pub access_ttl: u32,
    /// Seconds a refresh token lives (capped by the session's `max_lifetime` where it is used).
    pub refresh_ttl: u32,
    /// How often a new token-sealing and identity-signing key is made.
    pub key_rotation: Duration,
    /// The identity JWT's `iss` and `aud`.
    pub issuer: Box<str>,
    pub audience: Box<str>,
    /// Seconds an identity JWT lives.
    pub identity_ttl: u32,
    /// Header carrying the identity JWT, as configured (case kept).
    pub identity_header: Box<str>,
    /// The user, tenant and roles header names, as configured.
    pub headers: IdentityHeaderNames,
    /// Password-checking threads (`hash_threads` resolved: never 0).
    pub hash_threads: usize,
    /// Password checks that may wait; one more is answered 503.
    pub hash_queue: usize,
    /// The operator's login page; none: the built-in one.
    pub login_template: Option<Arc<LoginTemplate>>,
    /// Every pool, in config order (by name); routes and hosts refer to them by index.
    pub pools: Vec<Pool>,
    /// `[metering] enabled`: usage is counted per tenant.
    pub metering: bool,
    /// Each pool's tenant, in pool order (the metering's names).
    pub tenants: Vec<Box<str>>,
    /// `[metering] over_quota`: 429 or 403.
    pub over_quota: u16,
}

/// One `[pools.NAME]`.
pub struct Pool {
    pub name: Box<str>,
    /// Tenant named to backends (the pool's name unless configured).
    pub tenant: Box<str>,
    /// The pool's users; empty for an upstream pool.
    pub users: Arc<UsersFile>,
    /// Hosts whose `/.tether/*` endpoints use this pool, lowercase.
    pub hosts: Vec<Box<str>>,
    /// Rules for passwords set in this pool.
    pub rules: PasswordRules,
    pub self_registration: bool,
    /// Where logins are relayed instead of checked against `users`.
    pub upstream: Option<UpstreamAuth>,
    /// The tenant's usage quotas.
    pub quotas: Vec<Quota>,
    /// When failed logins lock an account or address (none: never).
    pub lockout: Option<Lockout>,
    /// Applications that use the pool for single sign-on (OAuth 2.0 / OpenID Connect, issue #22).
    pub clients: Vec<crate::auth::oauth::Client>,
}

impl Pool {
    /// The registered client application `id` (`None`: unknown here).
    pub fn client(&self, id: &str) -> Option<&crate::auth::oauth::Client> {
        self.clients.iter().find(|c| *c.id == *id)
    }
}

/// At most `limit` of `metric` per `period` for a pool's tenant, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub metric: crate::limits::metering::Metric,
    pub period: crate::limits::metering::Period,
    pub limit: u64,
}

/// A pool's lockout policies, compiled from `[pools.NAME.lockout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Per account (tenant and user name).
    pub account: crate::limits::lockout::Policy,
    /// Per client address (none: addresses are not locked): the account's waits, its own failure factor,
    /// no quick check (many users may share an address) and never permanent.
    pub address: Option<crate::limits::lockout::Policy>,
}

impl Lockout {
    /// `None` when disabled.
    pub fn of(c: &crate::config::schema::LockoutConfig) -> Option<Lockout> {
        if !c.enabled {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let account = crate::limits::lockout::Policy {
            failures: u64::from(c.failures.max(1)),
            wait_increment: ms(c.wait_increment),
            max_wait: ms(c.max_wait),
            quick_login_check: ms(c.quick_login_check),
            min_quick_wait: ms(c.min_quick_wait),
            reset_after: ms(c.reset_after),
            permanent_after: u64::from(c.permanent_after),
        };
        Some(Lockout {
            account,
            address: c.per_address.then_some(crate::limits::lockout::Policy {
                failures: u64::from(c.address_failures.max(1)),
                quick_login_check: 0,
                permanent_after: 0,
                ..account
            }),
        })
    }
}

// By hand, so a logged snapshot shows how many users a pool has, never their password hashes.
impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("users", &self.users.users.len())
            .field("hosts", &self.hosts)
            .field("rules", &self.rules)
            .field("self_registration", &self.self_registration)
            .field("upstream", &self.upstream)
            .field("lockout", &self.lockout)
            .field("clients", &self.clients)
            .finish()
    }
}

/// An upstream auth endpoint, resolved.
#[derive(Debug, Clone)]
pub struct UpstreamAuth {
    /// The URLs as configured.
    pub login_url: Box<str>,
    pub refresh_url: Option<Box<str>>,
    /// Where both URLs' requests go (their host and port are the same), resolved when the config is built.
    pub address: SocketAddr,
    /// Request targets: the URLs' paths (with their query, if any).
    pub login_path: Box<str>,
    pub refresh_path: Option<Box<str>>,
    /// `Host` header value: the URLs' authority (`host` or `host:port`) as written.
    pub host: Box<str>,
    /// Header carrying the upstream's credential.
    pub header: Box<str>,
    /// Time the upstream has to answer.
    pub timeout: Duration,
}

impl AuthSettings {
    /// Compiles `[auth]` and `[pools]`; `None` when no pool is configured (then nothing logs in). Reads the
    /// users files and the login template, and resolves upstream host names, so a reload picks up changed
    /// files. Errors start with the key they are about.
    pub fn build(config: &Config) -> Result<Option<AuthSettings>, String> {
        if config.pools.is_empty() {
            return Ok(None);
        }
        let defaults = AuthConfig::default();
        let auth = config.auth.as_ref().unwrap_or(&defaults);
        let login_template = match &auth.login_page {
            Some(page) => Some(Arc::new(
                LoginTemplate::load(&config.resolve_path(page))
                    .map_err(|e| format!("auth.login_page: {e}"))?,
            )),
            None => None,
        };
        let pools = config
            .pools
            .iter()
            .map(|(name, pool)| build_pool(config, name, pool))
            .collect::<Result<Vec<Pool>, String>>()?;
        Ok(Some(AuthSettings {
            cookie: auth.cookie.as_str().into(),
            idle_timeout: secs(auth.idle_timeout),
            max_lifetime: secs(auth.max_lifetime),
            access_ttl: secs(auth.access_token_ttl),
            refresh_ttl: secs(auth.refresh_token_ttl),
            key_rotation: auth.key_rotation,
            issuer: auth.issuer.as_str().into(),
            audience: auth.audience.as_str().into(),
            identity_ttl: secs(auth.identity_token_ttl),
            identity_header: auth.identity_token_header.as_str().into(),
            headers: IdentityHeaderNames {
                user: auth.user_header.clone(),
                tenant: auth.tenant_header.clone(),
                roles: auth.roles_header.clone(),
            },
            hash_threads: resolve_hash_threads(auth.hash_threads),
            hash_queue: auth.hash_queue,
            login_template,
            tenants: pools.iter().map(|p| p.tenant.clone()).collect(),
            pools,
            metering: config.metering.enabled,
            over_quota: config.metering.over_quota,
        }))
    }

    /// The pool whose `/.tether/*` endpoints serve `host` (a `Host` value: a port and a trailing dot are
    /// ignored, case does not matter): the pool listing it, else the only pool when there is exactly one.
    /// Allocates nothing.
    pub fn pool_for_host(&self, host: &[u8]) -> Option<usize> {
        let host = crate::route::host_of(host);
        let listed = self.pools.iter().position(|p| {
            p.hosts
                .iter()
                .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
        });
        match listed {
            Some(i) => Some(i),
            None if self.pools.len() == 1 => Some(0),
            None => None,
        }
    }

    /// Whether `name` (any case) is one of the identity header names or the JWT header: such request headers
    /// from clients are dropped.
    pub fn is_identity_header(&self, name: &[u8]) -> bool {
        [
            self.identity_header.as_ref(),
            self.headers.user.as_str(),
            self.headers.tenant.as_str(),
            self.headers.roles.as_str(),
        ]
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// `hash_threads` as configured, with 0 meaning half the CPUs (at least 1): argon2 is CPU-bound, and the
/// other half stays for the workers during a login storm.
fn resolve_hash_threads(configured: usize) -> usize {
    match configured {
        0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
        n => n,
    }
}

/// Whole seconds, saturating (validation keeps durations far below `u32::MAX` seconds).
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn build_pool(config: &Config, name: &str, pool: &PoolConfig) -> Result<Pool, String> {
    let key = format!("pools.{name}");
    let (users, upstream) = match (&pool.upstream, &pool.users) {
        (Some(up), _) => (
            Arc::new(UsersFile::default()),
            Some(build_upstream(up).map_err(|e| format!("{key}.upstream: {e}"))?),
        ),
        (None, Some(file)) => {
            let users = UsersFile::load(&config.resolve_path(file)).map_err(|e| {
                let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                format!("{key}.users: {}", lines.join("; "))
            })?;
            (Arc::new(users), None)
        }
        (None, None) => {
            return Err(format!(
                "{key}.users: a users file is required (or upstream)"
            ));
        }
    };
    Ok(Pool {
        name: name.into(),
        tenant: pool.tenant.as_deref().unwrap_or(name).into(),
        users,
        hosts: pool
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase().into())
            .collect(),
        rules: PasswordRules {
            min_length: pool.min_password_length,
            refuse_common: pool.refuse_common_passwords,
        },
        self_registration: pool.self_registration,
        upstream,
        quotas: pool
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| {
                Ok(Quota {
                    metric: crate::limits::metering::Metric::parse(&q.metric)
                        .ok_or_else(|| format!("{key}.quotas[{i}].metric: unknown metric"))?,
                    period: crate::limits::metering::Period::parse(&q.period)
                        .ok_or_else(|| format!("{key}.quotas[{i}].period: unknown period"))?,
                    limit: q.limit,
                })
            })
            .collect::<Result<_, String>>()?,
        lockout: Lockout::of(&pool.lockout),
        clients: pool
            .clients
            .iter()
            .map(|c| crate::auth::oauth::Client {
                id: c.client_id.as_str().into(),
                secret_hash: c.secret_hash.as_deref().map(Into::into),
                redirect_uris: c.redirect_uris.iter().map(|u| u.as_str().into()).collect(),
                post_logout_redirect_uris: c
                    .post_logout_redirect_uris
                    .iter()
                    .map(|u| u.as_str().into())
                    .collect(),
                scopes: c.scopes.iter().map(|s| s.as_str().into()).collect(),
                code_ttl: secs(c.code_ttl),
                access_ttl: secs(c.access_token_ttl),
                refresh_ttl: secs(c.refresh_token_ttl),
            })
            .collect(),
    })
}

fn build_upstream(up: &UpstreamAuthConfig) -> Result<UpstreamAuth, String> {
    let login = UpstreamUrl::parse(&up.login_url).map_err(|e| format!("login_url: {e}"))?;
    let refresh = match &up.refresh_url {
        Some(url) => {
            let refresh = UpstreamUrl::parse(url).map_err(|e| format!("refresh_url: {e}"))?;
            if !refresh.same_endpoint(&login) {
                return Err(format!(
                    "refresh_url: must have login_url's host and port ({})",
                    login.authority
                ));
            }
            Some(refresh)
        }
        None => None,
    };
    let address = login.resolve().map_err(|e| format!("login_url: {e}"))?;
    Ok(UpstreamAuth {
        login_url: up.login_url.as_str().into(),
        refresh_url: up.refresh_url.as_deref().map(Into::into),
        address,
        login_path: login.path.into(),
        refresh_path: refresh.map(|r| r.path.into()),
        host: login.authority.into(),
        header: up.header.as_str().into(),
        timeout: up.timeout,
    })
}

/// An `http://host[:port]/path` URL taken apart; shared with validation so both accept the same URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamUrl<'a> {
    /// `host` or `host:port` as written (the `Host` header value).
    pub authority: &'a str,
    /// Host without brackets (an IPv6 literal is bare here).
    pub host: &'a str,
    pub port: u16,
    /// Starts with `/`; includes the query if any.
    pub path: &'a str,
}

impl<'a> UpstreamUrl<'a> {
    /// Parses `http://host[:port][/path]` (port 80 and path `/` when left out). `https` is refused: the
    /// upstream client speaks plain HTTP only, so the message says so rather than "bad scheme".
    pub(crate) fn parse(url: &'a str) -> Result<UpstreamUrl<'a>, String> {
        const FORM: &str = "expected http://host:port/path, e.g. \"http://127.0.0.1:9003/login\"";
        let scheme_end = url.find("://").ok_or_else(|| format!("{url:?}: {FORM}"))?;
        let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
        if scheme.eq_ignore_ascii_case("https") {
            return Err(format!(
                "{url:?}: https is not supported for upstream auth (tether speaks plain HTTP to it); use http:// to an endpoint on a network you trust"
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!("{url:?}: scheme {scheme:?} is not http; {FORM}"));
        }
        if let Some(c) = url
            .chars()
            .find(|&c| c.is_whitespace() || c.is_control() || c == '#' || !c.is_ascii())
        {
            return Err(format!("{url:?}: {c:?} cannot appear in the URL"));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
            Some(_) => return Err(format!("{url:?}: the path must start with /; {FORM}")),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: user names or passwords in the URL are not supported"
            ));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (ip, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{url:?}: {ip:?} is not an IPv6 address"));
            }
            match after {
                "" => (ip, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None => return Err(format!("{url:?}: {FORM}")),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: the host is missing; {FORM}"));
        }
        if !authority.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(format!(
                "{url:?}: {host:?} is not a host name or IP address"
            ));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => {
                    return Err(format!(
                        "{url:?}: port {p:?} is not a number from 1 to 65535"
                    ));
                }
            },
        };
        Ok(UpstreamUrl {
            authority,
            host,
            port,
            path,
        })
    }

    /// Whether both URLs go to the same host and port (one resolved address serves both).
    pub(crate) fn same_endpoint(&self, other: &UpstreamUrl<'_>) -> bool {
        self.host.eq_ignore_ascii_case(other.host) && self.port == other.port
    }

    /// The first address the host resolves to (an IP literal resolves to itself, without DNS).
    fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = (self.host, self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    /// A scratch directory for a config and the files it names.
    struct Dir(tempfile::TempDir);

    impl Dir {
        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let p = self.0.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    fn dir() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    const USERS: &str = "[[users]]\nname = \"alice\"\nhash = \"$argon2id$v=19$m=19456,t=2,p=1$O7QQ6By/dHFb/jG16VbE3Q$K+V4hyI70/U5DXwjKdCeWpkylLezmeobtHHeqe6duiM\"\nroles = [\"user\"]\n";

    const BASE: &str = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[clusters.app]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n[[routes]]\ncluster = \"app\"\n";

    fn config(d: &Dir, extra: &str) -> Config {
        let path = d.write("lb.toml", &format!("{BASE}{extra}"));
        load_str(
            &std::fs::read_to_string(&path).unwrap(),
            path.to_str().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn no_pools_no_settings() {
        let d = dir();
        let c = config(&d, "[auth]\n");
        assert!(AuthSettings::build(&c).unwrap().is_none());
    }

    #[test]
    fn defaults_compile_to_seconds() {
        let d = dir();
        d.write("users.toml", USERS);
        let c = config(&d, "[pools.mail]\nusers = \"users.toml\"\n");
        let s = AuthSettings::build(&c).unwrap().unwrap();
        assert_eq!(&*s.cookie, "tether_session");
        assert_eq!(
            (
                s.idle_timeout,
                s.max_lifetime,
                s.access_ttl,
                s.refresh_ttl,
                s.identity_ttl
            ),
            (1800, 43200, 300, 86400, 300)
        );
        assert_eq!(s.key_rotation, Duration::from_secs(86400));
        assert_eq!((&*s.issuer, &*s.audience), ("tether", "backends"));
        assert_eq!(&*s.identity_header, "X-Tether-Identity");
        assert_eq!(s.headers, IdentityHeaderNames::default());
        assert!(s.hash_threads >= 1);
        assert_eq!(s.hash_queue, 256);
        assert!(s.login_template.is_none());
        assert_eq!(s.pools.len(), 1);
        let p = &s.pools[0];
        assert_eq!((&*p.name, &*p.tenant), ("mail", "mail"));
        assert_eq!(p.users.get("alice").unwrap().roles, ["user"]);
        assert_eq!(p.rules, PasswordRules::default());
        assert!(!p.self_registration && p.upstream.is_none());
        // The debug form counts users and shows no hash.
        assert!(!format!("{s:?}").contains("argon2id"));
    }

    #[test]
    fn pools_hosts_and_identity_headers() {
        let d = dir();
        d.write("users.toml", USERS);
        d.write("login.html", "<form>{{csrf}}</form>");
        let c = config(
            &d,
            "[auth]\nhash_threads = 3\nuser_header = \"X-User\"\nlogin_page = \"login.html\"\n\
             [pools.a]\nusers = \"users.toml\"\nhosts = [\"A.example\"]\ntenant = \"acme\"\n\
             [pools.b]\nusers = \"users.toml\"\nhosts = [\"b.example\"]\nmin_password_length = 12\n\
             refuse_common_passwords = false\nself_registration = true\n",
        );
        let s = AuthSettings::build(&c).unwrap().unwrap();
        assert_eq!(s.hash_threads, 3);
        assert!(s.login_template.is_some());
        let names: Vec<&str> = s.pools.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(&*s.pools[0].tenant, "acme");
        assert_eq!(s.pools[0].hosts, [Box::from("a.example")]);
        assert_eq!(
            s.pools[1].rules,
            PasswordRules {
                min_length: 12,
                refuse_common: false
            }
        );
        assert!(s.pools[1].self_registration);
        assert_eq!(s.pool_for_host(b"a.example"), Some(0));
        assert_eq!(s.pool_for_host(b"A.Example:8443"), Some(0));
        assert_eq!(s.pool_for_host(b"b.example."), Some(1));
        // Two pools: an unlisted host has none.
        assert_eq!(s.pool_for_host(b"c.example"), None);
        for h in [
            "x-user",
            "X-TETHER-TENANT",
            "x-tether-roles",
            "X-Tether-Identity",
        ] {
            assert!(s.is_identity_header(h.as_bytes()), "{h}");
        }
        assert!(!s.is_identity_header(b"x-tether-user"));
        assert!(!s.is_identity_header(b"cookie"));
    }

    #[test]
    fn the_only_pool_serves_every_host() {
        let d = dir();
        d.write("users.toml", USERS);
        let c = config(
            &d,
            "[pools.a]\nusers = \"users.toml\"\nhosts = [\"a.example\"]\n",
        );
        let s = AuthSettings::build(&c).unwrap().unwrap();
        assert_eq!(s.pool_for_host(b"other.example"), Some(0));
    }

    #[test]
    fn upstream_pool_resolves_its_endpoint() {
        let d = dir();
        let c = config(
            &d,
            "[pools.ext]\nupstream = { login_url = \"http://127.0.0.1:9003/login?v=1\", refresh_url = \"http://127.0.0.1:9003/refresh\" }\n",
        );
        let s = AuthSettings::build(&c).unwrap().unwrap();
        let p = &s.pools[0];
        assert!(p.users.users.is_empty());
        let up = p.upstream.as_ref().unwrap();
        assert_eq!(up.address, "127.0.0.1:9003".parse().unwrap());
        assert_eq!(&*up.login_path, "/login?v=1");
        assert_eq!(up.refresh_path.as_deref(), Some("/refresh"));
        assert_eq!(&*up.host, "127.0.0.1:9003");
        assert_eq!(&*up.header, "Authorization");
        assert_eq!(up.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_users_file_broken_after_validation_fails_the_build() {
        let d = dir();
        let users = d.write("users.toml", USERS);
        let c = config(&d, "[pools.mail]\nusers = \"users.toml\"\n");
        std::fs::write(&users, "[[users]]\nname = \"bob\"\n").unwrap();
        let e = AuthSettings::build(&c).unwrap_err();
        assert!(e.starts_with("pools.mail.users: "), "{e}");
        assert!(e.contains("hash"), "{e}");
        std::fs::remove_file(&users).unwrap();
        let e = AuthSettings::build(&c).unwrap_err();
        assert!(e.contains("cannot read the users file"), "{e}");
    }

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://auth.internal:9003/login").unwrap();
        assert_eq!(
            (u.authority, u.host, u.port, u.path),
            ("auth.internal:9003", "auth.internal", 9003, "/login")
        );
        let u = UpstreamUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host, u.port, u.path), ("::1", 81, "/"));
        let u = UpstreamUrl::parse("HTTP://10.0.0.1/x").unwrap();
        assert_eq!((u.authority, u.port), ("10.0.0.1", 80));
        for (bad, hint) in [
            ("https://a:1/x", "https is not supported"),
            ("ftp://a:1/x", "not http"),
            ("a:1/x", "expected http://"),
            ("http://:1/x", "host is missing"),
            ("http://a:0/x", "port \"0\""),
            ("http://a:x/x", "port \"x\""),
            ("http://u:p@a:1/x", "user names"),
            ("http://a:1?x", "must start with /"),
            ("http://a b:1/x", "' '"),
            ("http://a:1/x#f", "'#'"),
            ("http://[zz]:1/x", "not an IPv6"),
            ("http://a!:1/", "not a host name"),
        ] {
            let e = UpstreamUrl::parse(bad).unwrap_err();
            assert!(e.contains(hint), "{bad}: {e}");
        }
    }
}
