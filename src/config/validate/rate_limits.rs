//! `[[rate_limits]]`, the routes' `rate_limits`, and `[deny]`.

use super::Validator;
use crate::auth::users::check_name;
use crate::config::names::quote_key;
use crate::config::schema::Config;
use crate::limits::deny::Cidr;
use crate::limits::rate::LimitKey;

impl Validator {
    pub(super) fn rate_limits(&mut self, config: &Config) {
        for (i, l) in config.rate_limits.iter().enumerate() {
            let key = format!("rate_limits[{i}]");
            if l.name.is_empty()
                || l.name.contains(['"', '\\'])
                || l.name.chars().any(char::is_control)
            {
                self.error(
                    format!("{key}.name"),
                    "must be a non-empty name without quotes, backslashes or control characters",
                );
            }
            if let Some(j) = config.rate_limits[..i]
                .iter()
                .position(|o| o.name == l.name)
            {
                self.conflict(
                    format!("{key}.name"),
                    format!("{:?} is already the name of rate_limits[{j}]", l.name),
                    format!("rate_limits[{j}].name"),
                );
            }
            if LimitKey::parse(&l.key).is_none() {
                self.error(
                    format!("{key}.key"),
                    format!(
                        "{:?} is not \"address\", \"user\", \"tenant\", \"route\" or \"header:NAME\"",
                        l.key
                    ),
                );
            }
            if l.rate == 0 {
                self.error(format!("{key}.rate"), "must be at least 1");
            }
            if l.per.is_zero() {
                self.error(
                    format!("{key}.per"),
                    "must be greater than zero (e.g. \"1s\")",
                );
            } else if l.cluster_wide && l.per.subsec_nanos() != 0 {
                self.error(
                    format!("{key}.per"),
                    "a cluster-wide limit counts in whole-second windows (e.g. \"1s\", \"1m\")",
                );
            }
            match l.burst {
                Some(0) => self.error(format!("{key}.burst"), "must be at least 1"),
                Some(_) if l.cluster_wide => self.error(
                    format!("{key}.burst"),
                    "a cluster-wide limit is a fixed window of `rate` per `per`: it has no burst",
                ),
                _ => {}
            }
            for (tier, &rate) in &l.tiers {
                let tkey = format!("{key}.tiers.{}", quote_key(tier));
                if let Err(e) = check_name(tier) {
                    self.error(tkey.clone(), format!("tier name {e}"));
                }
                if rate == 0 {
                    self.error(tkey, "must be at least 1");
                }
            }
        }
        for (name, pool) in &config.pools {
            if let Some(tier) = &pool.tier {
                if let Err(e) = check_name(tier) {
                    self.error(
                        format!("pools.{}.tier", quote_key(name)),
                        format!("tier name {e}"),
                    );
                }
            }
        }
        for (i, r) in config.routes.iter().enumerate() {
            for (j, name) in r.rate_limits.iter().enumerate() {
                if !config.rate_limits.iter().any(|l| &l.name == name) {
                    self.error(
                        format!("routes[{i}].rate_limits[{j}]"),
                        format!("no [[rate_limits]] is named {name:?}"),
                    );
                }
            }
        }
        for (list, entries) in [("allow", &config.deny.allow), ("deny", &config.deny.deny)] {
            for (i, e) in entries.iter().enumerate() {
                if Cidr::parse(e).is_none() {
                    self.error(
                        format!("deny.{list}[{i}]"),
                        format!(
                            "{e:?} is not an address or an address block (e.g. \"10.0.0.0/8\")"
                        ),
                    );
                }
            }
        }
        for (i, r) in config.deny.rules.iter().enumerate() {
            match (r.requests_per_sec, r.bad_requests_per_min) {
                (Some(_), Some(_)) => self.error(
                    format!("deny.rules[{i}].bad_requests_per_min"),
                    "a rule counts one thing: requests_per_sec or bad_requests_per_min; make two rules",
                ),
                (None, None) => self.error(
                    format!("deny.rules[{i}]"),
                    "needs requests_per_sec or bad_requests_per_min",
                ),
                _ => {}
            }
            if r.requests_per_sec == Some(0) {
                self.error(
                    format!("deny.rules[{i}].requests_per_sec"),
                    "must be at least 1",
                );
            }
            if r.bad_requests_per_min == Some(0) {
                self.error(
                    format!("deny.rules[{i}].bad_requests_per_min"),
                    "must be at least 1",
                );
            }
            if r.ban.as_secs() == 0 {
                self.error(
                    format!("deny.rules[{i}].ban"),
                    "must be at least one second (e.g. \"10m\")",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::*;

    #[test]
    fn limits_and_deny_entries_are_checked() {
        let text = format!(
            "{BASE}\n[[rate_limits]]\nname = \"api\"\nkey = \"cookie\"\nrate = 0\nper = \"0s\"\n\
             [[rate_limits]]\nname = \"api\"\nkey = \"address\"\nrate = 5\nper = \"1m\"\nburst = 3\ncluster_wide = true\n\
             tiers = {{ gold = 0, \"b d\" = 5 }}\n\
             [deny]\nallow = [\"10.0.0.0/33\"]\ndeny = [\"127.0.0.2\"]\nrules = [{{ requests_per_sec = 0, ban = \"0s\" }}, \
             {{ bad_requests_per_min = 0, ban = \"1m\" }}, {{ ban = \"1m\" }}, \
             {{ requests_per_sec = 5, bad_requests_per_min = 5, ban = \"1m\" }}]\n"
        );
        let keys: Vec<String> = errors(&text).into_iter().map(|e| e.1).collect();
        assert_eq!(
            keys,
            [
                "rate_limits[0].key",
                "rate_limits[0].rate",
                "rate_limits[0].per",
                "rate_limits[1].name",
                "rate_limits[1].burst",
                "rate_limits[1].tiers.\"b d\"",
                "rate_limits[1].tiers.gold",
                "deny.allow[0]",
                "deny.rules[0].requests_per_sec",
                "deny.rules[0].ban",
                "deny.rules[1].bad_requests_per_min",
                "deny.rules[2]",
                "deny.rules[3].bad_requests_per_min",
            ]
        );
    }

    #[test]
    fn a_route_names_existing_limits() {
        let text = BASE.replace("[[routes]]\n", "[[routes]]\nrate_limits = [\"nope\"]\n");
        let keys: Vec<String> = errors(&text).into_iter().map(|e| e.1).collect();
        assert_eq!(keys, ["routes[0].rate_limits[0]"]);
    }
}
