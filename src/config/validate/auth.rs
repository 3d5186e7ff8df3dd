//! `[auth]`, `[pools.NAME]` and the routes' login keys: lifetimes that fit together, cookie and header names
//! that are tokens and cannot be confused with the proxy's own headers, pools whose users file and login
//! page load, hosts and tenants owned by one pool, upstream URLs tether can reach, and routes naming a pool
//! and roles that exist.

use super::{Validator, is_header_char};
use crate::auth::settings::UpstreamUrl;
use crate::auth::users::check_name;
use crate::config::names::{closest, quote_key};
use crate::config::schema::{
    AuthConfig, Config, LockoutConfig, PoolConfig, RouteAuthMode, RouteConfig,
};
use std::collections::BTreeMap;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Most password-checking threads: argon2 takes 19 MiB each, and more threads than this is a typo.
const MAX_HASH_THREADS: usize = 64;

impl Validator {
    /// `[auth]`, every `[pools.NAME]`, and the login keys of every route.
    pub(super) fn auth(&mut self, config: &Config) {
        if let Some(auth) = &config.auth {
            self.auth_section(config, auth);
        }
        if !matches!(config.metering.over_quota, 429 | 403) {
            self.error("metering.over_quota", "must be 429 or 403");
        }
        if config.metering.file.as_deref() == Some("") {
            self.error("metering.file", "must not be empty");
        }
        let mut tenants: BTreeMap<&str, String> = BTreeMap::new();
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        for (name, pool) in &config.pools {
            let key = format!("pools.{}", quote_key(name));
            if let Err(e) = check_name(name) {
                self.error(key.clone(), format!("pool name {e}"));
            }
            self.pool(config, &key, pool);
            // Backends tell tenants apart by name: two pools of one tenant would mix their users.
            let (tenant, tenant_key) = match &pool.tenant {
                Some(t) => (t.as_str(), format!("{key}.tenant")),
                None => (name.as_str(), key.clone()),
            };
            if pool.tenant.is_some() {
                if let Err(e) = check_name(tenant) {
                    self.error(tenant_key.clone(), format!("tenant name {e}"));
                }
            }
            match tenants.get(tenant) {
                Some(first) => self.conflict(
                    tenant_key,
                    format!("tenant \"{tenant}\" already belongs to another pool"),
                    first.clone(),
                ),
                None => {
                    tenants.insert(tenant, tenant_key);
                }
            }
            for (i, host) in pool.hosts.iter().enumerate() {
                let hkey = format!("{key}.hosts[{i}]");
                if let Err(e) = check_pool_host(host) {
                    self.error(hkey, e);
                    continue;
                }
                match hosts.get(&host.to_ascii_lowercase()) {
                    Some(first) => self.conflict(
                        hkey,
                        format!(
                            "host \"{host}\" is listed twice; its /.tether/ endpoints can serve one pool only"
                        ),
                        first.clone(),
                    ),
                    None => {
                        hosts.insert(host.to_ascii_lowercase(), hkey);
                    }
                }
            }
        }
        // A client_id names one application of one pool: the token endpoint finds it by id alone.
        let mut clients: BTreeMap<&str, String> = BTreeMap::new();
        for (name, pool) in &config.pools {
            for (i, c) in pool.clients.iter().enumerate() {
                let ckey = format!("pools.{}.clients[{i}].client_id", quote_key(name));
                match clients.get(c.client_id.as_str()) {
                    Some(first) => self.conflict(
                        ckey,
                        format!("client_id \"{}\" is registered twice", c.client_id),
                        first.clone(),
                    ),
                    None => {
                        clients.insert(c.client_id.as_str(), ckey);
                    }
                }
            }
        }
        for (i, route) in config.routes.iter().enumerate() {
            self.route_auth(config, &format!("routes[{i}]"), route);
        }
    }

    /// The `[auth]` table as written.
    fn auth_section(&mut self, config: &Config, a: &AuthConfig) {
        for (key, value) in [
            ("auth.idle_timeout", a.idle_timeout),
            ("auth.max_lifetime", a.max_lifetime),
            ("auth.access_token_ttl", a.access_token_ttl),
            ("auth.refresh_token_ttl", a.refresh_token_ttl),
        ] {
            if value < SECOND {
                self.error(key, "must be at least 1s (e.g. \"30m\")");
            }
        }
        // A session cannot outlive its own lifetime, so neither an idle limit nor an access token longer than
        // it means anything; refresh tokens are capped by it where they are used, so they may be longer.
        if a.max_lifetime >= SECOND {
            for (key, value) in [
                ("auth.idle_timeout", a.idle_timeout),
                ("auth.access_token_ttl", a.access_token_ttl),
            ] {
                if value > a.max_lifetime {
                    self.error(
                        key,
                        format!(
                            "must not exceed auth.max_lifetime ({})",
                            humantime::format_duration(a.max_lifetime)
                        ),
                    );
                }
            }
        }
        if a.key_rotation < MINUTE {
            self.error("auth.key_rotation", "must be at least 1m (e.g. \"24h\")");
        }
        if a.identity_token_ttl < SECOND || a.identity_token_ttl > HOUR {
            self.error(
                "auth.identity_token_ttl",
                "must be between 1s and 1h: backends cannot revoke an identity token, so keep it short",
            );
        }
        if a.cookie.is_empty() || !a.cookie.chars().all(is_header_char) {
            self.error(
                "auth.cookie",
                format!(
                    "{:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                    a.cookie
                ),
            );
        }
        let headers = [
            ("auth.identity_token_header", &a.identity_token_header),
            ("auth.user_header", &a.user_header),
            ("auth.tenant_header", &a.tenant_header),
            ("auth.roles_header", &a.roles_header),
        ];
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (key, name) in headers {
            if let Err(e) = check_identity_header(name) {
                self.error(key, e);
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if let Some(first) = seen.get(&lower) {
                self.conflict(
                    key.to_string(),
                    format!("header {name} is already used for another identity header"),
                    first.to_string(),
                );
            } else {
                seen.insert(lower, key);
            }
        }
        // tether removes the priority header before a request reaches a backend, which would remove the
        // identity header of the same name too.
        if let Some(p) = &config.qos.priority_header {
            if let Some(key) = seen.get(&p.to_ascii_lowercase()) {
                self.conflict(
                    "qos.priority_header".to_string(),
                    format!("{p} is also an identity header; use another name"),
                    key.to_string(),
                );
            }
        }
        for (key, value) in [("auth.issuer", &a.issuer), ("auth.audience", &a.audience)] {
            if value.is_empty() {
                self.error(key, "must not be empty");
            } else if value.chars().any(char::is_control) {
                self.error(key, "must not contain control characters");
            }
        }
        if a.hash_queue == 0 {
            self.error(
                "auth.hash_queue",
                "must be at least 1 (password checks that may wait)",
            );
        }
        if a.hash_threads > MAX_HASH_THREADS {
            self.error(
                "auth.hash_threads",
                format!(
                    "must be at most {MAX_HASH_THREADS} (0: half the CPUs), got {}",
                    a.hash_threads
                ),
            );
        }
        if let Some(page) = &a.login_page {
            let path = config.resolve_path(page);
            if let Err(e) = crate::auth::login_form::LoginTemplate::load(&path) {
                self.error("auth.login_page", e.to_string());
            }
        }
    }

    /// One pool's users (or upstream), password rules and upstream URLs; names, tenants and hosts are
    /// checked across pools by the caller.
    fn pool(&mut self, config: &Config, key: &str, pool: &PoolConfig) {
        match (&pool.users, &pool.upstream) {
            (None, None) => self.error(
                format!("{key}.users"),
                "a users file is required (e.g. users = \"users.toml\"), or upstream to relay logins",
            ),
            (Some(_), Some(_)) => self.error(
                format!("{key}.users"),
                "an upstream pool has no local users; remove users or upstream",
            ),
            (Some(file), None) => {
                if let Err(errors) = crate::auth::users::UsersFile::load(&config.resolve_path(file)) {
                    for e in errors.0 {
                        self.error(format!("{key}.users"), e.to_string());
                    }
                }
            }
            (None, Some(_)) => {}
        }
        self.range(
            &format!("{key}.min_password_length"),
            pool.min_password_length,
            1,
            1024,
            " characters",
        );
        for (i, q) in pool.quotas.iter().enumerate() {
            use crate::limits::metering::{Metric, Period};
            if Metric::parse(&q.metric).is_none() {
                self.error(
                    format!("{key}.quotas[{i}].metric"),
                    format!(
                        "unknown metric {:?}: expected requests, bytes_in, bytes_out, backend_us or logins",
                        q.metric
                    ),
                );
            }
            if Period::parse(&q.period).is_none() {
                self.error(
                    format!("{key}.quotas[{i}].period"),
                    format!(
                        "unknown period {:?}: expected minute, hour, day or month",
                        q.period
                    ),
                );
            }
            if q.limit == 0 {
                self.error(format!("{key}.quotas[{i}].limit"), "must be at least 1");
            }
        }
        if !pool.quotas.is_empty() && !config.metering.enabled {
            self.error(
                format!("{key}.quotas"),
                "quotas need metering: remove [metering] enabled = false",
            );
        }
        self.lockout(&format!("{key}.lockout"), &pool.lockout);
        for (i, client) in pool.clients.iter().enumerate() {
            self.client(&format!("{key}.clients[{i}]"), client);
        }
        let Some(up) = &pool.upstream else {
            return;
        };
        let login = match UpstreamUrl::parse(&up.login_url) {
            Ok(u) => Some(u),
            Err(e) => {
                self.error(format!("{key}.upstream.login_url"), e);
                None
            }
        };
        if let Some(url) = &up.refresh_url {
            match UpstreamUrl::parse(url) {
                Err(e) => self.error(format!("{key}.upstream.refresh_url"), e),
                Ok(refresh) => {
                    if let Some(login) = &login {
                        if !refresh.same_endpoint(login) {
                            self.error(
                                format!("{key}.upstream.refresh_url"),
                                format!(
                                    "must have login_url's host and port ({}): both go to one endpoint",
                                    login.authority
                                ),
                            );
                        }
                    }
                }
            }
        }
        // The relayed token replaces the client's copy of this header; any header HTTP or the proxy
        // gives a meaning to (Host, Content-Length, Cookie…) would break the request or smuggle one.
        if !up.header.eq_ignore_ascii_case("authorization") {
            if let Err(e) = check_identity_header(&up.header) {
                self.error(format!("{key}.upstream.header"), e);
            }
        }
        if up.timeout.is_zero() {
            self.error(
                format!("{key}.upstream.timeout"),
                "must be greater than zero (e.g. \"5s\")",
            );
        }
    }

    /// A route's `auth`, `pool`, `roles` and `groups`.
    /// One `[[pools.NAME.clients]]` (issue #22): a client id and scopes of safe characters, a secret hash
    /// argon2 accepts, redirect URIs that are absolute and exact, lifetimes in range. Ids are checked
    /// across pools by the caller.
    fn client(&mut self, key: &str, c: &crate::config::schema::ClientConfig) {
        use crate::auth::oauth::{check_client_name, check_registered_uri};
        if let Err(e) = check_client_name(&c.client_id) {
            self.error(format!("{key}.client_id"), e);
        }
        if let Some(hash) = &c.secret_hash {
            if let Err(e) = crate::auth::password::check_hash(hash) {
                self.error(
                    format!("{key}.secret_hash"),
                    format!("{e} (make one with `tether clients secret`)"),
                );
            }
        }
        if c.redirect_uris.is_empty() {
            self.error(
                format!("{key}.redirect_uris"),
                "at least one redirect URI is required",
            );
        }
        for (field, uris) in [
            ("redirect_uris", &c.redirect_uris),
            ("post_logout_redirect_uris", &c.post_logout_redirect_uris),
        ] {
            for (j, uri) in uris.iter().enumerate() {
                if let Err(e) = check_registered_uri(uri) {
                    self.error(format!("{key}.{field}[{j}]"), e);
                }
            }
        }
        for (j, scope) in c.scopes.iter().enumerate() {
            if let Err(e) = check_client_name(scope) {
                self.error(format!("{key}.scopes[{j}]"), e);
            }
        }
        for (field, d, max) in [
            ("code_ttl", c.code_ttl, 10 * MINUTE),
            ("access_token_ttl", c.access_token_ttl, 24 * HOUR),
            ("refresh_token_ttl", c.refresh_token_ttl, 365 * 24 * HOUR),
        ] {
            if d < SECOND || d > max {
                self.error(
                    format!("{key}.{field}"),
                    format!("must be between 1s and {}", humantime::format_duration(max)),
                );
            }
        }
    }

    /// `[pools.NAME.lockout]`: counts in range, waits that fit in the reset window (a lock never outlives
    /// the failures it counts).
    fn lockout(&mut self, key: &str, l: &LockoutConfig) {
        self.range(&format!("{key}.failures"), l.failures as usize, 1, 1000, "");
        self.range(
            &format!("{key}.address_failures"),
            l.address_failures as usize,
            1,
            100_000,
            "",
        );
        self.range(
            &format!("{key}.permanent_after"),
            l.permanent_after as usize,
            0,
            1000,
            "",
        );
        if l.wait_increment.is_zero() {
            self.error(
                format!("{key}.wait_increment"),
                "must be greater than zero (e.g. \"1m\")",
            );
        }
        if l.max_wait < l.wait_increment {
            self.error(
                format!("{key}.max_wait"),
                format!(
                    "must be at least wait_increment ({})",
                    humantime::format_duration(l.wait_increment)
                ),
            );
        }
        if !l.quick_login_check.is_zero() && l.min_quick_wait.is_zero() {
            self.error(
                format!("{key}.min_quick_wait"),
                "must be greater than zero while quick_login_check is on (e.g. \"1m\")",
            );
        }
        let longest = l.max_wait.max(l.min_quick_wait);
        if l.reset_after < longest {
            self.error(
                format!("{key}.reset_after"),
                format!(
                    "must be at least the longest wait ({}): a lock ends with its failures' window",
                    humantime::format_duration(longest)
                ),
            );
        }
        if l.reset_after > Duration::from_secs(365 * 24 * 3600) {
            self.error(format!("{key}.reset_after"), "must be at most a year");
        }
    }

    fn route_auth(&mut self, config: &Config, key: &str, r: &RouteConfig) {
        for (field, names) in [("roles", &r.roles), ("groups", &r.groups)] {
            for (j, name) in names.iter().enumerate() {
                if let Err(e) = check_name(name) {
                    self.error(format!("{key}.{field}[{j}]"), e);
                }
            }
        }
        if r.auth == RouteAuthMode::None {
            for (field, set) in [
                ("pool", r.pool.is_some()),
                ("roles", !r.roles.is_empty()),
                ("groups", !r.groups.is_empty()),
            ] {
                if set {
                    self.error(
                        format!("{key}.{field}"),
                        "only with auth = \"login\"; add it, or remove this key",
                    );
                }
            }
            return;
        }
        if config.pools.is_empty() {
            self.error(
                format!("{key}.auth"),
                "a login needs a pool of users: add [pools.NAME] with users = \"users.toml\"",
            );
            return;
        }
        let known = || {
            let names: Vec<String> = config.pools.keys().map(|k| format!("`{k}`")).collect();
            names.join(", ")
        };
        match &r.pool {
            Some(pool) if !config.pools.contains_key(pool) => {
                let mut message = format!("unknown pool `{pool}`");
                if let Some(best) = closest(pool, config.pools.keys().map(String::as_str)) {
                    message.push_str(&format!(" (did you mean `{best}`?)"));
                }
                message.push_str(&format!("; defined pools: {}", known()));
                self.error(format!("{key}.pool"), message);
            }
            None if config.pools.len() > 1 => self.error(
                format!("{key}.pool"),
                format!(
                    "several pools are defined; name the one whose users log in here: {}",
                    known()
                ),
            ),
            _ => {}
        }
    }
}

/// An identity header name: a token, and none that the proxy itself reads, rewrites or forwards with a
/// meaning of its own (a backend trusting the identity must never get one of those from a client instead).
fn check_identity_header(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(is_header_char) {
        return Err(format!("{name:?} is not a header name"));
    }
    const RESERVED: [&str; 11] = [
        "connection",
        "content-length",
        "transfer-encoding",
        "host",
        "cookie",
        "authorization",
        "forwarded",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
    ];
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str())
        || lower.starts_with("x-forwarded-")
        || lower.starts_with("proxy-")
    {
        return Err(format!(
            "{name} is a header HTTP or the proxy itself gives a meaning to; use another name, e.g. X-Tether-…"
        ));
    }
    Ok(())
}

/// A pool host: an exact host name or IP address as the `Host` header carries it, without a port or
/// wildcard (each host's `/.tether/` endpoints serve one pool).
fn check_pool_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".to_string());
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => Ok(()),
            _ => Err(format!(
                "\"{host}\" is not a bracketed IPv6 address (and a port is not allowed)"
            )),
        };
    }
    if host.contains('*') {
        return Err(format!(
            "\"{host}\": wildcards are not allowed; list each host name"
        ));
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "remove the port (\"{name}\"): a pool serves its hosts on every listener's port"
            ));
        }
    }
    super::routes::check_host_labels(host, host)
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;
    use tempfile::TempDir;

    fn tmp() -> TempDir {
        tempfile::tempdir().unwrap()
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$O7QQ6By/dHFb/jG16VbE3Q$K+V4hyI70/U5DXwjKdCeWpkylLezmeobtHHeqe6duiM";

    /// A users file with alice, in `dir`.
    fn users_file(dir: &TempDir) -> String {
        scratch_file(
            dir,
            "users.toml",
            &format!("[[users]]\nname = \"alice\"\nhash = \"{HASH}\"\n"),
        )
    }

    /// `BASE` with one pool `mail` (its users line is line 10) and `extra` after it.
    fn with_pool(dir: &TempDir, extra: &str) -> String {
        format!("{BASE}[pools.mail]\nusers = {:?}\n{extra}", users_file(dir))
    }

    #[test]
    fn pool_with_users_and_an_auth_section_of_defaults_is_valid() {
        let d = tmp();
        assert_eq!(errors(&with_pool(&d, "[auth]\n")), []);
        assert_eq!(errors(&with_pool(&d, "")), []);
        // [auth] without pools is allowed too (nothing logs in yet).
        assert_eq!(errors(&format!("{BASE}[auth]\n")), []);
    }

    #[test]
    fn auth_durations() {
        for (line, key, hint) in [
            ("idle_timeout = \"0s\"", "auth.idle_timeout", "at least 1s"),
            (
                "max_lifetime = \"500ms\"",
                "auth.max_lifetime",
                "at least 1s",
            ),
            (
                "access_token_ttl = \"0s\"",
                "auth.access_token_ttl",
                "at least 1s",
            ),
            (
                "refresh_token_ttl = \"0s\"",
                "auth.refresh_token_ttl",
                "at least 1s",
            ),
            ("key_rotation = \"59s\"", "auth.key_rotation", "at least 1m"),
            (
                "identity_token_ttl = \"0s\"",
                "auth.identity_token_ttl",
                "between 1s and 1h",
            ),
            (
                "identity_token_ttl = \"61m\"",
                "auth.identity_token_ttl",
                "between 1s and 1h",
            ),
            (
                "idle_timeout = \"13h\"",
                "auth.idle_timeout",
                "must not exceed auth.max_lifetime (12h)",
            ),
            (
                "access_token_ttl = \"13h\"",
                "auth.access_token_ttl",
                "auth.max_lifetime",
            ),
        ] {
            let m = only(&before(&format!("[auth]\n{line}")), 2, key);
            assert!(m.contains(hint), "{line}: {m}");
        }
        // A refresh token may outlive the session's lifetime (it is capped where it is used).
        assert_eq!(errors(&before("[auth]\nrefresh_token_ttl = \"30d\"")), []);
    }

    #[test]
    fn auth_cookie_and_header_names() {
        for (line, key, hint) in [
            ("cookie = \"\"", "auth.cookie", "not a cookie name"),
            ("cookie = \"a;b\"", "auth.cookie", "not a cookie name"),
            (
                "user_header = \"X User\"",
                "auth.user_header",
                "not a header name",
            ),
            (
                "tenant_header = \"\"",
                "auth.tenant_header",
                "not a header name",
            ),
            (
                "roles_header = \"Authorization\"",
                "auth.roles_header",
                "another name",
            ),
            (
                "user_header = \"x-forwarded-user\"",
                "auth.user_header",
                "another name",
            ),
            (
                "identity_token_header = \"Proxy-Identity\"",
                "auth.identity_token_header",
                "another name",
            ),
            (
                "identity_token_header = \"TE\"",
                "auth.identity_token_header",
                "another name",
            ),
            (
                "identity_token_header = \"cookie\"",
                "auth.identity_token_header",
                "another name",
            ),
            ("issuer = \"\"", "auth.issuer", "must not be empty"),
            (
                "audience = \"a\\nb\"",
                "auth.audience",
                "control characters",
            ),
            ("hash_queue = 0", "auth.hash_queue", "at least 1"),
            ("hash_threads = 65", "auth.hash_threads", "at most 64"),
        ] {
            let m = only(&before(&format!("[auth]\n{line}")), 2, key);
            assert!(m.contains(hint), "{line}: {m}");
        }
        assert_eq!(errors(&before("[auth]\nhash_threads = 64")), []);
    }

    #[test]
    fn identity_headers_are_distinct() {
        let m = only(
            &format!("[auth]\nuser_header = \"X-Who\"\ntenant_header = \"x-who\"\n{BASE}"),
            3,
            "auth.tenant_header",
        );
        assert!(m.contains("already used"), "{m}");
        assert!(m.contains("(see auth.user_header, line 2)"), "{m}");
        // Nor may the QoS priority header, which is removed before backends, share a name with one.
        let m = only(
            &format!("[qos]\npriority_header = \"X-Tether-User\"\n[auth]\n{BASE}"),
            2,
            "qos.priority_header",
        );
        assert!(m.contains("identity header"), "{m}");
    }

    #[test]
    fn login_page_must_load() {
        let d = tmp();
        let page = scratch_file(&d, "login.html", "<form>{{csrf}}{{nope}}</form>");
        let m = only(
            &before(&format!("[auth]\nlogin_page = {page:?}")),
            2,
            "auth.login_page",
        );
        assert!(m.contains("unknown placeholder"), "{m}");
        let m = only(
            &before("[auth]\nlogin_page = \"/nonexistent/login.html\""),
            2,
            "auth.login_page",
        );
        assert!(m.contains("cannot read the login template"), "{m}");
        let page = scratch_file(&d, "login-ok.html", "<form>{{csrf}}</form>");
        assert_eq!(
            errors(&before(&format!("[auth]\nlogin_page = {page:?}"))),
            []
        );
    }

    #[test]
    fn pool_needs_users_that_load() {
        let d = tmp();
        let m = only(
            &format!("{BASE}[pools.mail]\nhosts = []\n"),
            9,
            "pools.mail.users",
        );
        assert!(m.contains("a users file is required"), "{m}");
        let bad = scratch_file(
            &d,
            "bad-users.toml",
            "[[users]]\nname = \"-x\"\nhash = \"plain\"\n",
        );
        let errs = errors(&format!("{BASE}[pools.mail]\nusers = {bad:?}\n"));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        for (line, key, message) in &errs {
            assert_eq!((*line, key.as_str()), (10, "pools.mail.users"));
            // The users file's own message, with its path and line.
            assert!(message.starts_with(&format!("{bad}:")), "{message}");
        }
        let m = only(
            &format!("{BASE}[pools.mail]\nusers = \"/nonexistent/users.toml\"\n"),
            10,
            "pools.mail.users",
        );
        assert!(m.contains("cannot read the users file"), "{m}");
        let m = only(
            &with_pool(
                &d,
                "upstream = { login_url = \"http://127.0.0.1:9003/login\" }\n",
            ),
            10,
            "pools.mail.users",
        );
        assert!(m.contains("remove users or upstream"), "{m}");
    }

    #[test]
    fn pool_names_tenants_and_rules() {
        let d = tmp();
        let users = users_file(&d);
        let m = only(
            &format!("{BASE}[pools.\"-mail\"]\nusers = {users:?}\n"),
            9,
            "pools.-mail",
        );
        assert!(m.contains("pool name"), "{m}");
        let m = only(
            &with_pool(&d, "tenant = \"a b\"\n"),
            11,
            "pools.mail.tenant",
        );
        assert!(m.contains("tenant name"), "{m}");
        // Two pools for one tenant: the second names the first.
        let m = only(
            &with_pool(
                &d,
                &format!("[pools.other]\nusers = {users:?}\ntenant = \"mail\"\n"),
            ),
            13,
            "pools.other.tenant",
        );
        assert!(m.contains("tenant \"mail\" already belongs"), "{m}");
        assert!(m.contains("(see pools.mail, line 9)"), "{m}");
        for (line, hint) in [
            ("min_password_length = 0", "between 1 and 1024"),
            ("min_password_length = 1025", "between 1 and 1024"),
        ] {
            let m = only(
                &with_pool(&d, &format!("{line}\n")),
                11,
                "pools.mail.min_password_length",
            );
            assert!(m.contains(hint), "{line}: {m}");
        }
    }

    #[test]
    fn pool_hosts() {
        let d = tmp();
        let users = users_file(&d);
        for (host, hint) in [
            ("", "empty"),
            ("*.example.com", "wildcards"),
            ("mail.example.com:443", "remove the port"),
            ("a..b", "empty label"),
            ("a/b", "'/'"),
            ("[::1]:80", "bracketed IPv6"),
        ] {
            let m = only(
                &with_pool(&d, &format!("hosts = [{host:?}]\n")),
                11,
                "pools.mail.hosts[0]",
            );
            assert!(m.contains(hint), "{host}: {m}");
        }
        assert_eq!(
            errors(&with_pool(
                &d,
                "hosts = [\"Mail.example.com\", \"10.0.0.1\", \"[::1]\"]\n"
            )),
            []
        );
        let m = only(
            &with_pool(
                &d,
                &format!(
                    "hosts = [\"mail.example.com\"]\n[pools.other]\nusers = {users:?}\nhosts = [\"MAIL.example.com\"]\n"
                ),
            ),
            14,
            "pools.other.hosts[0]",
        );
        assert!(m.contains("listed twice"), "{m}");
        assert!(m.contains("(see pools.mail.hosts[0], line 11)"), "{m}");
    }

    #[test]
    fn upstream_pool() {
        let up = |fields: &str| format!("{BASE}[pools.ext]\nupstream = {{ {fields} }}\n");
        assert_eq!(
            errors(&up(
                "login_url = \"http://127.0.0.1:9003/login\", refresh_url = \"http://127.0.0.1:9003/refresh\", header = \"X-Token\", timeout = \"2s\""
            )),
            []
        );
        for (fields, key, hint) in [
            (
                "login_url = \"https://127.0.0.1:9003/login\"",
                "pools.ext.upstream.login_url",
                "https is not supported",
            ),
            (
                "login_url = \"127.0.0.1:9003\"",
                "pools.ext.upstream.login_url",
                "expected http://",
            ),
            (
                "login_url = \"http://127.0.0.1:9003/login\", refresh_url = \"http://127.0.0.1:9004/refresh\"",
                "pools.ext.upstream.refresh_url",
                "login_url's host and port (127.0.0.1:9003)",
            ),
            (
                "login_url = \"http://127.0.0.1:9003/login\", refresh_url = \"http://x:\"",
                "pools.ext.upstream.refresh_url",
                "port",
            ),
            (
                "login_url = \"http://a:1/\", header = \"\"",
                "pools.ext.upstream.header",
                "not a header name",
            ),
            (
                "login_url = \"http://a:1/\", header = \"Content-Length\"",
                "pools.ext.upstream.header",
                "gives a meaning to",
            ),
            (
                "login_url = \"http://a:1/\", header = \"host\"",
                "pools.ext.upstream.header",
                "gives a meaning to",
            ),
            (
                "login_url = \"http://a:1/\", timeout = \"0s\"",
                "pools.ext.upstream.timeout",
                "greater than zero",
            ),
        ] {
            let m = only(&up(fields), 10, key);
            assert!(m.contains(hint), "{fields}: {m}");
        }
    }

    #[test]
    fn login_routes_need_a_pool() {
        let d = tmp();
        let login = |extra: &str| {
            base_with(
                "cluster = \"app\"\n",
                &format!("cluster = \"app\"\nauth = \"login\"\n{extra}"),
            )
        };
        let m = only(&login(""), 9, "routes[0].auth");
        assert!(m.contains("add [pools.NAME]"), "{m}");
        // With one pool, it is the default.
        let one = |extra: &str| {
            format!(
                "{}[pools.mail]\nusers = {:?}\n",
                login(extra),
                users_file(&d)
            )
        };
        assert_eq!(
            errors(&one(
                "roles = [\"admin\"]\ngroups = [\"staff\"]\nidentity = false\n"
            )),
            []
        );
        assert_eq!(errors(&one("pool = \"mail\"\n")), []);
        let m = only(&one("pool = \"mails\"\n"), 10, "routes[0].pool");
        assert!(
            m.contains("unknown pool `mails` (did you mean `mail`?)"),
            "{m}"
        );
        assert!(m.contains("defined pools: `mail`"), "{m}");
        let m = only(&one("roles = [\"ad min\"]\n"), 10, "routes[0].roles[0]");
        assert!(m.contains("' '"), "{m}");
        let m = only(&one("groups = [\"\"]\n"), 10, "routes[0].groups[0]");
        assert!(m.contains("empty"), "{m}");
        // Two pools: the route must say which.
        let two = format!("{}[pools.b]\nusers = {:?}\n", one(""), users_file(&d));
        // The key is missing, so the error points at the route.
        let m = only(&two, 7, "routes[0].pool");
        assert!(m.contains("several pools"), "{m}");
        assert!(m.contains("`b`, `mail`"), "{m}");
    }

    #[test]
    fn login_keys_only_with_login() {
        let d = tmp();
        for (line, key) in [
            ("pool = \"mail\"", "routes[0].pool"),
            ("roles = [\"admin\"]", "routes[0].roles"),
            ("groups = [\"staff\"]", "routes[0].groups"),
        ] {
            let text = format!(
                "{}[pools.mail]\nusers = {:?}\n",
                base_with(
                    "cluster = \"app\"\n",
                    &format!("cluster = \"app\"\n{line}\n")
                ),
                users_file(&d)
            );
            let m = only(&text, 9, key);
            assert!(m.contains("only with auth = \"login\""), "{line}: {m}");
        }
        // identity = false on a route without login is harmless.
        assert_eq!(
            errors(&base_with(
                "cluster = \"app\"\n",
                "cluster = \"app\"\nidentity = false\n"
            )),
            []
        );
    }

    #[test]
    fn lockout_keys() {
        let d = tmp();
        let ok = "[pools.mail.lockout]\nfailures = 3\nwait_increment = \"2s\"\nmax_wait = \"10s\"\nreset_after = \"1m\"\nmin_quick_wait = \"2s\"\n";
        assert_eq!(errors(&with_pool(&d, ok)), []);
        for (table, key, says) in [
            ("failures = 0", "failures", "1"),
            ("address_failures = 0", "address_failures", "1"),
            ("permanent_after = 1001", "permanent_after", "1000"),
            (
                "wait_increment = \"0s\"",
                "wait_increment",
                "greater than zero",
            ),
            (
                "wait_increment = \"20m\"",
                "max_wait",
                "at least wait_increment",
            ),
            (
                "min_quick_wait = \"0s\"",
                "min_quick_wait",
                "greater than zero",
            ),
            ("reset_after = \"5m\"", "reset_after", "longest wait"),
        ] {
            let errs = errors(&with_pool(&d, &format!("[pools.mail.lockout]\n{table}\n")));
            assert_eq!(errs.len(), 1, "{table}: {errs:#?}");
            assert_eq!(errs[0].1, format!("pools.mail.lockout.{key}"), "{table}");
            assert!(errs[0].2.contains(says), "{table}: {}", errs[0].2);
        }
        // A quick check of 0 needs no quick wait; a disabled lockout is still checked.
        let off = "[pools.mail.lockout]\nquick_login_check = \"0s\"\nmin_quick_wait = \"0s\"\n";
        assert_eq!(errors(&with_pool(&d, off)), []);
    }
}
