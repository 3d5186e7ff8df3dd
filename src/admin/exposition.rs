//! `GET /metrics`: the metrics registry's Prometheus text, and beside it the figures that count
//! themselves where they live — backends (health, load, state), the session table, TLS handshakes,
//! the metering's usage per tenant, the notification queues — all `tether_`-prefixed, counters ending
//! in `_total`, in base units.

use super::Admin;
use crate::snapshot::ConfigSnapshot;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition.
pub(super) fn render(
    admin: &Admin,
    snapshot: &ConfigSnapshot,
    store: Option<&crate::store::Store>,
    unix_now: u32,
) -> String {
    let mut out = crate::metrics::prometheus(&admin.registry.totals());
    backends(&mut out, snapshot);
    if let Some(store) = store {
        store_kinds(&mut out, store);
    }
    let t = admin.sticky.table.totals();
    family(
        &mut out,
        "tether_session_table_entries",
        "gauge",
        "Sessions in the session table.",
    );
    let _ = writeln!(out, "tether_session_table_entries {}", t.entries);
    family(
        &mut out,
        "tether_session_table_lookups_total",
        "counter",
        "Session-table lookups by result.",
    );
    let _ = writeln!(
        out,
        "tether_session_table_lookups_total{{result=\"hit\"}} {}",
        t.hits
    );
    let _ = writeln!(
        out,
        "tether_session_table_lookups_total{{result=\"miss\"}} {}",
        t.misses
    );
    family(
        &mut out,
        "tether_session_table_binds_total",
        "counter",
        "Sessions bound to a backend (first binds and rebinds).",
    );
    let _ = writeln!(
        out,
        "tether_session_table_binds_total{{kind=\"new\"}} {}",
        t.binds
    );
    let _ = writeln!(
        out,
        "tether_session_table_binds_total{{kind=\"rebind\"}} {}",
        t.rebinds
    );
    let tls = &admin.tls;
    family(
        &mut out,
        "tether_tls_handshakes_total",
        "counter",
        "TLS handshakes on tether's listeners by kind.",
    );
    for (kind, c) in [
        ("full", &tls.full),
        ("resumed", &tls.resumed),
        ("failed", &tls.failed),
    ] {
        let _ = writeln!(
            out,
            "tether_tls_handshakes_total{{kind=\"{kind}\"}} {}",
            c.load(Relaxed)
        );
    }
    if let Some(settings) = snapshot.auth.as_deref() {
        out.push_str(&crate::limits::metering::prometheus(
            &admin.counters,
            &settings.tenants,
            unix_now,
        ));
    }
    if let Some(hub) = &admin.notify {
        let s = &hub.stats;
        for (name, help, c) in [
            (
                "tether_notifications_queued_total",
                "Notifications written to a queue.",
                &s.queued,
            ),
            (
                "tether_notifications_delivered_total",
                "Notifications handed to a client.",
                &s.delivered,
            ),
            (
                "tether_notifications_acks_total",
                "Acknowledgements written.",
                &s.acks,
            ),
            (
                "tether_notifications_dropped_no_session_total",
                "Notifications for no live session, dropped.",
                &s.dropped_no_session,
            ),
            (
                "tether_notifications_dropped_full_total",
                "Old notifications dropped to make room.",
                &s.dropped_full,
            ),
            (
                "tether_notifications_refused_full_total",
                "Publishes refused: every queue full.",
                &s.refused_full,
            ),
            (
                "tether_notifications_unauthorized_total",
                "Publishes refused for a wrong or missing secret.",
                &s.unauthorized,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", c.load(Relaxed));
        }
        family(
            &mut out,
            "tether_notifications_waiting",
            "gauge",
            "Long polls and streams waiting for a notification.",
        );
        let _ = writeln!(out, "tether_notifications_waiting {}", hub.waiting());
    }
    out
}

/// Records of each kind in this node's store, counted by the store as it applies them (no scan): login
/// sessions, notifications and their acknowledgements, uploads and their chunks (the spool), and the rest.
fn store_kinds(out: &mut String, store: &crate::store::Store) {
    use crate::store::Kind;
    let name = "tether_store_kind_records";
    family(
        out,
        name,
        "gauge",
        "Records of a kind in this node's store (tombstones and expired ones not yet removed included).",
    );
    for (kind, label) in [
        (Kind::SessionBinding, "session_binding"),
        (Kind::TicketKeys, "ticket_keys"),
        (Kind::LoginSession, "login_session"),
        (Kind::TokenKey, "token_key"),
        (Kind::IdentityKey, "identity_key"),
        (Kind::User, "user"),
        (Kind::Counter, "counter"),
        (Kind::Deny, "deny"),
        (Kind::Notification, "notification"),
        (Kind::NotificationAck, "notification_ack"),
        (Kind::Upload, "upload"),
        (Kind::UploadChunk, "upload_chunk"),
        (Kind::SingleUse, "single_use"),
    ] {
        let _ = writeln!(out, "{name}{{kind=\"{label}\"}} {}", store.len_of(kind));
    }
}

/// Per backend and cluster: requests, in flight, queued, up, eligible.
fn backends(out: &mut String, snapshot: &ConfigSnapshot) {
    type Figure = fn(&crate::balance::ClusterBackend) -> u64;
    let series: [(&str, &str, &str, Figure); 5] = [
        (
            "tether_backend_requests_total",
            "counter",
            "Requests a backend answered (any status; the address's, over every cluster).",
            |b| b.state.requests.load(Relaxed),
        ),
        (
            "tether_backend_in_flight",
            "gauge",
            "Attempts in flight on a backend.",
            |b| u64::from(b.state.inflight()),
        ),
        (
            "tether_backend_queue_length",
            "gauge",
            "Requests waiting for a QoS slot on a backend.",
            |b| {
                b.state
                    .queue
                    .report()
                    .waiting
                    .iter()
                    .map(|&n| u64::from(n))
                    .sum()
            },
        ),
        (
            "tether_backend_up",
            "gauge",
            "1 while health checks and passive health hold the backend up.",
            |b| u64::from(b.state.is_up()),
        ),
        (
            "tether_backend_eligible",
            "gauge",
            "1 while the backend may take new requests (up, not drained or disabled).",
            |b| u64::from(b.eligible()),
        ),
    ];
    let name = "tether_backend_responses_total";
    family(
        out,
        name,
        "counter",
        "Responses a backend answered by status class (the address's, over every cluster).",
    );
    for c in &snapshot.clusters {
        for b in &c.backends {
            for (class, n) in crate::metrics::STATUS_CLASSES
                .iter()
                .zip(&b.state.responses)
                .skip(1)
            {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",backend=\"{}\",class=\"{class}\"}} {}",
                    label(&c.name),
                    b.state.address,
                    n.load(Relaxed)
                );
            }
        }
    }
    for (name, kind, help, f) in series {
        family(out, name, kind, help);
        for c in &snapshot.clusters {
            for b in &c.backends {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",backend=\"{}\"}} {}",
                    label(&c.name),
                    b.state.address,
                    f(b)
                );
            }
        }
    }
}
