//! The admin status page in a real browser: headless Chromium driven by ChromeDriver over the W3C
//! WebDriver protocol (JSON over plain HTTP, spoken here on a std `TcpStream`). A two-node cluster like
//! `configs/cluster/` (two backends, a pool of users, an admin listener with a token) serves some
//! traffic; the page must list every backend of the config in its DOM, and after a backend is disabled
//! through the API it must show it disabled — by itself, without a reload. A screenshot is kept as a test
//! artifact (`target/test-artifacts/status-page.png`).
//!
//! Chromium and ChromeDriver are not Rust: `scripts/test` installs them (Debian's `chromium` and
//! `chromium-driver`). Without them this test fails and says so; it never passes by skipping.

mod common;

use common::admin::*;
use common::browser::*;
use common::cluster::*;
use common::login::*;
use common::*;

const TOKEN: &str = "status-page-admin-token";

/// The backend rows the page shows: `cluster/address` → (health, state), read from the DOM.
fn backend_rows(b: &Browser) -> Vec<(String, String, String)> {
    let v = b.run(
        "return [...document.querySelectorAll('#backends tbody tr[data-backend]')]\
         .map(tr => [tr.dataset.backend, tr.dataset.health, tr.dataset.state, tr.innerText]);",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = r[3].as_str().unwrap_or("");
            // What is shown agrees with the row's data: the state's word is in the row's text.
            let state = r[2].as_str().unwrap_or("").to_string();
            assert!(text.contains(&state), "row {text:?} does not show {state}");
            (
                r[0].as_str().unwrap_or("").to_string(),
                r[1].as_str().unwrap_or("").to_string(),
                state,
            )
        })
        .collect()
}

#[test]
fn the_status_page_shows_every_backend_and_a_disabled_one_in_chromium() {
    // Before anything starts: a missing browser fails here, naming scripts/test.
    let browser = Browser::start();

    // Two nodes like configs/cluster/ (here a and b), two backends, the demo pool, an admin listener.
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let one = Backend::named("one");
    let two = Backend::named("two");
    let configs: Vec<String> = mesh_configs(&["a", "b"], dir.path(), &[one.addr, two.addr])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[pools.demo]\nusers = \"{}\"\n\n[[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\n\
                 auth = \"login\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
                users_file()
            )
        })
        .collect();
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    let a = admin_addr(&nodes[0]);
    wait_peer(&nodes[0], "b", "up");
    // Some traffic for the page to show: requests on two routes, a login (tenant usage).
    let cookie = login_cookie_at(nodes[0].addr, "test");
    for i in 0..20 {
        assert_eq!(get(nodes[0].addr, &format!("/app/{i}")).status, 200);
        let r = get_with(
            nodes[0].addr,
            "/mail/inbox",
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(r.status, 200);
    }

    browser.open(&format!("http://ops:{TOKEN}@{a}/"));
    let expected: Vec<String> = [one.addr, two.addr]
        .iter()
        .map(|b| format!("app/{b}"))
        .collect();
    wait_page("both backends", &browser, |b| {
        let rows = backend_rows(b);
        expected.iter().all(|e| {
            rows.iter()
                .any(|(k, h, s)| k == e && h == "up" && s == "enabled")
        })
    });
    let rows = backend_rows(&browser);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // The other sections are filled from the API too: the peer, the tenant, the routes.
    wait_page("peer b up, tenant demo, two routes", &browser, |b| {
        let v = b.run(
            "return [document.querySelector('#peers tr[data-peer=\"b\"]')?.innerText || '', \
             document.querySelector('#tenants tr[data-tenant=\"demo\"]')?.innerText || '', \
             document.querySelectorAll('#routes tr[data-route]').length, \
             document.getElementById('error').textContent];",
        );
        v[0].as_str().unwrap_or("").contains("up")
            && !v[1].as_str().unwrap_or("").is_empty()
            && v[2].as_u64().is_some_and(|n| n >= 2)
            && v[3] == ""
    });

    // Disable one backend through the API; the page shows it without being reloaded (a value left on the
    // window survives only if the document stays the same).
    browser.run("window.tetherProbe = 'same document'; return null;");
    let path = format!("/api/backends/app/{}/disable", two.addr);
    let r = raw_exchange(
        a,
        format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let disabled = format!("app/{}", two.addr);
    wait_page("the backend disabled", &browser, |b| {
        backend_rows(b)
            .iter()
            .any(|(k, _, s)| *k == disabled && s == "disabled")
    });
    assert_eq!(
        browser.run("return window.tetherProbe || null;"),
        "same document",
        "the page was reloaded"
    );
    let rows = backend_rows(&browser);
    let enabled = format!("app/{}", one.addr);
    assert!(
        rows.iter().any(|(k, _, s)| *k == enabled && s == "enabled"),
        "{rows:?}"
    );

    // A few more refreshes draw the charts, then the screenshot.
    for i in 0..10 {
        let _ = get(nodes[0].addr, &format!("/app/more/{i}"));
    }
    wait_page("two more refreshes", &browser, |b| {
        b.run("return Number(document.getElementById('updated').dataset.refreshes || 0);")
            .as_u64()
            .is_some_and(|n| n >= 4)
    });
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = artifacts_dir().join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
