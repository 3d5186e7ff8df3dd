//! The webmail backend of `tether demo --cluster` (issue #19): a small mail application that shows what
//! tether keeps alive when a balancer node dies.
//!
//! Two instances run in one process. The mailboxes are the "mail system" both share (what a real mail
//! server keeps in its database); each instance's **app sessions** (the `APPSESSION` cookie: the draft
//! being composed, its attachments, a request count) live in that instance's memory only, so a request that
//! reached the other instance would find no session — stickiness visibly matters. Identity comes from
//! tether (`X-Tether-User`; the route needs a login). New mail is published to tether's publish listener as
//! a notification (on a thread of its own: the backends' event loop never blocks). Completed uploads arrive
//! from tether's spool at `POST /mail/attach` as one ordinary request.
//!
//! The page (`/mail/`) does the client side of failover itself: it knows the three nodes' addresses and
//! reaches each through a hidden same-origin relay frame (`/mail/relay`), so it needs neither CORS nor
//! anything but the page itself.

use super::{Answer, Request, Service, write_full_response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const PAGE: &str = include_str!("webmail.html");
const RELAY: &str = include_str!("relay.html");
/// Messages a mailbox keeps (the oldest go).
const MAILBOX_LIMIT: usize = 200;
/// App sessions an instance keeps (the least recently used go).
const SESSION_LIMIT: usize = 10_000;

/// A message in a mailbox.
#[derive(Debug, Clone, serde::Serialize)]
struct Message {
    id: u64,
    from: String,
    to: String,
    subject: String,
    body: String,
    /// Seconds since the Unix epoch.
    at: u64,
    attachments: Vec<Attachment>,
}

/// An attachment as the backend received it from tether's spool: its bytes are counted and hashed, not
/// kept (the page compares the hash with its own).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    id: u64,
    name: String,
    size: u64,
    sha256: String,
}

/// What both instances share: the mailboxes and the received attachments.
#[derive(Debug, Default)]
pub struct MailSystem {
    mailboxes: Mutex<HashMap<String, Vec<Message>>>,
    /// Received attachments by id, with their owner; taken into a message when it is sent.
    attachments: Mutex<HashMap<u64, (String, Attachment)>>,
    /// Attachments received for an app session, not yet in its draft: tether forwards a completed upload
    /// to any backend instance, and the one holding the session picks them up on its next request.
    pending: Mutex<HashMap<String, Vec<u64>>>,
    next_id: AtomicU64,
}

impl MailSystem {
    pub fn new() -> Arc<MailSystem> {
        Arc::new(MailSystem {
            next_id: AtomicU64::new(1),
            ..MailSystem::default()
        })
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Delivers a message to `to`'s mailbox; returns its id.
    pub fn deliver(
        &self,
        from: &str,
        to: &str,
        subject: &str,
        body: &str,
        attachments: Vec<Attachment>,
    ) -> u64 {
        let id = self.id();
        let message = Message {
            id,
            from: from.into(),
            to: to.into(),
            subject: subject.into(),
            body: body.into(),
            at: crate::sticky::unix_now() as u64,
            attachments,
        };
        let mut boxes = self.mailboxes.lock();
        let mailbox = boxes.entry(to.to_string()).or_default();
        mailbox.push(message);
        if mailbox.len() > MAILBOX_LIMIT {
            mailbox.remove(0);
        }
        id
    }

    fn inbox(&self, user: &str) -> Vec<Message> {
        let boxes = self.mailboxes.lock();
        let mut list = boxes.get(user).cloned().unwrap_or_default();
        list.reverse();
        list
    }
}

/// Sends notifications to tether's publish listeners, trying each in turn (a node may be down).
#[derive(Clone)]
pub struct Publisher {
    queue: crossbeam_channel::Sender<Value>,
}

impl Publisher {
    /// Starts the publishing thread for `addresses` (host:port of the publish listeners) and `secret`.
    pub fn start(addresses: Vec<String>, secret: String) -> std::io::Result<Publisher> {
        let (queue, jobs) = crossbeam_channel::bounded::<Value>(1024);
        std::thread::Builder::new()
            .name("webmail-publish".into())
            .spawn(move || {
                for body in jobs {
                    let body = body.to_string();
                    let sent = addresses
                        .iter()
                        .any(|address| publish_once(address, &secret, &body).is_ok());
                    if !sent {
                        log::warn!("webmail: no publish listener took a notification");
                    }
                }
            })?;
        Ok(Publisher { queue })
    }

    /// Queues a notification for `user` (dropped when the queue is full: the mail itself is delivered).
    pub fn notify(&self, user: &str, data: Value) {
        let _ = self.queue.try_send(json!({ "user": user, "data": data }));
    }
}

/// One `POST /publish`, answered 202 (else an error).
fn publish_once(address: &str, secret: &str, body: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|_| std::io::Error::other("bad publish address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "POST /publish HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if answer.starts_with(b"HTTP/1.1 202") {
        Ok(())
    } else {
        Err(std::io::Error::other("publish refused"))
    }
}

/// An instance's app session: what it holds for one browser of one user.
#[derive(Debug, Clone)]
struct AppSession {
    user: String,
    created: u64,
    requests: u64,
    draft: Draft,
    last_used: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Draft {
    #[serde(default)]
    to: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body: String,
    /// Attachment ids received for this draft.
    #[serde(default)]
    attachments: Vec<u64>,
}

/// One webmail instance.
pub struct Webmail {
    number: usize,
    mail: Arc<MailSystem>,
    publisher: Publisher,
    /// The client listeners of the three nodes (`http://127.0.0.1:8181`, …), for the page.
    nodes: Vec<String>,
    sessions: Mutex<HashMap<String, AppSession>>,
}

impl Webmail {
    pub fn new(
        number: usize,
        mail: Arc<MailSystem>,
        publisher: Publisher,
        nodes: Vec<String>,
    ) -> Webmail {
        Webmail {
            number,
            mail,
            publisher,
            nodes,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The request's app session (created when the request has none this instance knows), whether the
    /// request came with a cookie this instance did not know, and the `Set-Cookie` line for a new one.
    fn session(&self, request: &Request<'_>, user: &str) -> (String, bool, String) {
        let cookie = request.header("cookie").and_then(|c| {
            c.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == "APPSESSION").then(|| value.to_string())
            })
        });
        let now = crate::sticky::unix_now() as u64;
        let mut sessions = self.sessions.lock();
        if let Some(id) = &cookie {
            if let Some(s) = sessions.get_mut(id).filter(|s| s.user == user) {
                s.requests += 1;
                s.last_used = now;
                return (id.clone(), false, String::new());
            }
        }
        if sessions.len() >= SESSION_LIMIT {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        let id = format!("w{}-{}", self.number, random_hex());
        sessions.insert(
            id.clone(),
            AppSession {
                user: user.into(),
                created: now,
                requests: 1,
                draft: Draft::default(),
                last_used: now,
            },
        );
        let set = format!("Set-Cookie: APPSESSION={id}; Path=/; HttpOnly; SameSite=Lax\r\n");
        (id, cookie.is_some(), set)
    }

    /// Moves the attachments received for app session `id` into its draft.
    fn take_pending(&self, id: &str) {
        let arrived = self.mail.pending.lock().remove(id).unwrap_or_default();
        if let Some(s) = self.sessions.lock().get_mut(id) {
            s.draft.attachments.extend(arrived);
        }
    }

    fn inbox(&self, request: &Request<'_>, user: &str) -> (u16, Value, String) {
        let (id, lost, set) = self.session(request, user);
        self.take_pending(&id);
        let sessions = self.sessions.lock();
        let s = &sessions[&id];
        let attachments: Vec<Value> = {
            let store = self.mail.attachments.lock();
            s.draft
                .attachments
                .iter()
                .filter_map(|a| store.get(a).map(|(_, a)| json!(a)))
                .collect()
        };
        let body = json!({
            "backend": self.number,
            "user": user,
            "session": {
                "id": id,
                "created": s.created,
                "requests": s.requests,
                "lost": lost,
            },
            "draft": {
                "to": s.draft.to, "subject": s.draft.subject, "body": s.draft.body,
                "attachments": attachments,
            },
            "messages": self.mail.inbox(user),
        });
        (200, body, set)
    }

    fn save_draft(&self, request: &Request<'_>, user: &str) -> (u16, Value, String) {
        let Ok(mut draft) = serde_json::from_slice::<Draft>(request.body) else {
            return (
                400,
                json!({"error": "the draft is not JSON"}),
                String::new(),
            );
        };
        let (id, lost, set) = self.session(request, user);
        let mut sessions = self.sessions.lock();
        let s = sessions.get_mut(&id).expect("just made");
        // Attachments are the session's own (the page only adds them): keep what it had.
        draft.attachments = std::mem::take(&mut s.draft.attachments);
        s.draft = draft;
        (200, json!({"saved": true, "lost": lost}), set)
    }

    fn send(&self, request: &Request<'_>, user: &str) -> (u16, Value, String) {
        let (id, _, set) = self.session(request, user);
        self.take_pending(&id);
        let draft = {
            let mut sessions = self.sessions.lock();
            let s = sessions.get_mut(&id).expect("just made");
            if let Ok(d) = serde_json::from_slice::<Draft>(request.body) {
                let attachments = std::mem::take(&mut s.draft.attachments);
                s.draft = d;
                s.draft.attachments = attachments;
            }
            std::mem::take(&mut s.draft)
        };
        let to = draft.to.trim();
        if to.is_empty()
            || !to
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return (400, json!({"error": "say whom to send it to"}), set);
        }
        let attachments: Vec<Attachment> = {
            let mut store = self.mail.attachments.lock();
            draft
                .attachments
                .iter()
                .filter_map(|a| store.remove(a))
                .filter(|(owner, _)| owner == user)
                .map(|(_, a)| a)
                .collect()
        };
        let subject = if draft.subject.trim().is_empty() {
            "(no subject)"
        } else {
            draft.subject.trim()
        };
        let count = attachments.len();
        let message = self
            .mail
            .deliver(user, to, subject, &draft.body, attachments);
        self.publisher.notify(
            to,
            json!({"kind": "mail", "id": message, "from": user, "subject": subject}),
        );
        (
            200,
            json!({"sent": message, "to": to, "attachments": count}),
            set,
        )
    }

    /// `POST /mail/attach`: a completed upload, forwarded by tether's spool to either instance. Hashed,
    /// counted, and queued for the draft of the app session the page names (the upload's metadata
    /// `session`).
    fn attach(&self, request: &Request<'_>, user: &str) -> (u16, Value, String) {
        use sha2::Digest;
        let metadata = request.header("x-tether-upload-metadata").unwrap_or("");
        let field = |key: &str| -> String {
            metadata
                .split(',')
                .find_map(|pair| {
                    let mut it = pair.trim().splitn(2, ' ');
                    (it.next() == Some(key)).then(|| it.next().unwrap_or(""))
                })
                .and_then(|v| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(v).ok()
                })
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        };
        let name = match field("filename") {
            n if n.is_empty() => "attachment".to_string(),
            n => n.chars().take(200).collect(),
        };
        let attachment = Attachment {
            id: self.mail.id(),
            name,
            size: request.body.len() as u64,
            sha256: hex(&sha2::Sha256::digest(request.body)),
        };
        let session = field("session");
        if !session.is_empty() {
            self.mail
                .pending
                .lock()
                .entry(session)
                .or_default()
                .push(attachment.id);
        }
        self.mail
            .attachments
            .lock()
            .insert(attachment.id, (user.to_string(), attachment.clone()));
        let location = format!("Location: /mail/attachments/{}\r\n", attachment.id);
        (201, json!(attachment), location)
    }

    fn page(&self, template: &str) -> Vec<u8> {
        let nodes = serde_json::to_string(&self.nodes).unwrap_or_else(|_| "[]".into());
        template.replace("__NODES__", &nodes).into_bytes()
    }
}

impl Service for Webmail {
    fn answer(&self, request: &Request<'_>, _now: Instant) -> Answer {
        let path = request.path.split('?').next().unwrap_or("/");
        let user = request.header("x-tether-user").unwrap_or("").to_string();
        let mut response = Vec::new();
        let keep = request.keep_alive;
        let html = "text/html; charset=utf-8";
        let nostore = "Cache-Control: no-store\r\n";
        if path.starts_with("/mail") && user.is_empty() {
            // tether's route needs a login, so this is a request that did not come through it.
            let body = br#"{"error":"no X-Tether-User: reach the webmail through tether"}"#;
            write_full_response(
                &mut response,
                401,
                "application/json",
                nostore,
                body,
                keep,
                self.number,
            );
        } else {
            match (request.method, path) {
                ("GET", "/mail" | "/mail/") => {
                    let (_, _, set) = self.session(request, &user);
                    let extra = format!("{nostore}{set}");
                    write_full_response(
                        &mut response,
                        200,
                        html,
                        &extra,
                        &self.page(PAGE),
                        keep,
                        self.number,
                    );
                }
                ("GET", "/mail/relay") => {
                    write_full_response(
                        &mut response,
                        200,
                        html,
                        nostore,
                        &self.page(RELAY),
                        keep,
                        self.number,
                    );
                }
                (method, _) => {
                    let (status, body, extra) = match (method, path) {
                        ("GET", "/mail/api/inbox") => self.inbox(request, &user),
                        ("PUT", "/mail/api/draft") => self.save_draft(request, &user),
                        ("POST", "/mail/api/send") => self.send(request, &user),
                        ("POST", "/mail/attach") => self.attach(request, &user),
                        (_, p) if p.starts_with("/mail") => (
                            404,
                            json!({"error": "no such webmail endpoint"}),
                            String::new(),
                        ),
                        _ => (
                            200,
                            json!({"hello": "webmail backend", "backend": self.number, "path": path}),
                            String::new(),
                        ),
                    };
                    let extra = format!("{nostore}{extra}");
                    let body = body.to_string();
                    write_full_response(
                        &mut response,
                        status,
                        "application/json",
                        &extra,
                        body.as_bytes(),
                        keep,
                        self.number,
                    );
                }
            }
        }
        Answer {
            response,
            close: !keep,
            at: None,
        }
    }
}

fn random_hex() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 12];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    hex(&b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(method: &'a str, path: &'a str, headers: &str, body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            path,
            headers: headers.to_string(),
            body,
            keep_alive: true,
        }
    }

    fn webmail() -> Webmail {
        let publisher = Publisher::start(Vec::new(), String::new()).unwrap();
        Webmail::new(
            1,
            MailSystem::new(),
            publisher,
            vec!["http://127.0.0.1:8181".into()],
        )
    }

    /// The app session id an inbox answer names.
    fn session_id(inbox: &str) -> String {
        inbox
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no session id in {inbox}"))
            .to_string()
    }

    fn text(a: &Answer) -> String {
        String::from_utf8_lossy(&a.response).into_owned()
    }

    #[test]
    fn a_session_is_known_only_to_the_instance_that_made_it() {
        let mail = MailSystem::new();
        let publisher = Publisher::start(Vec::new(), String::new()).unwrap();
        let one = Webmail::new(1, mail.clone(), publisher.clone(), Vec::new());
        let two = Webmail::new(2, mail, publisher, Vec::new());
        let now = Instant::now();
        let a = one.answer(
            &request("GET", "/mail/api/inbox", "X-Tether-User: alice\n", b""),
            now,
        );
        let t = text(&a);
        let cookie = t
            .split("Set-Cookie: APPSESSION=")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap()
            .to_string();
        let headers = format!("X-Tether-User: alice\nCookie: APPSESSION={cookie}\n");
        let again = text(&one.answer(&request("GET", "/mail/api/inbox", &headers, b""), now));
        assert!(
            !again.contains("Set-Cookie") && again.contains("\"lost\":false"),
            "{again}"
        );
        let other = text(&two.answer(&request("GET", "/mail/api/inbox", &headers, b""), now));
        assert!(
            other.contains("Set-Cookie: APPSESSION=w2-") && other.contains("\"lost\":true"),
            "{other}"
        );
    }

    #[test]
    fn a_sent_message_lands_in_the_recipients_inbox_with_its_attachment() {
        let w = webmail();
        let now = Instant::now();
        let alice = "X-Tether-User: alice\n";
        let first = text(&w.answer(&request("GET", "/mail/api/inbox", alice, b""), now));
        let sid = session_id(&first);
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let meta = format!(
            "{alice}Cookie: APPSESSION={sid}\nX-Tether-Upload-Metadata: filename {},session {}\n",
            b64("notes.txt"),
            b64(&sid)
        );
        let attached = text(&w.answer(&request("POST", "/mail/attach", &meta, b"hello"), now));
        assert!(
            attached.starts_with("HTTP/1.1 201")
                && attached.contains("Location: /mail/attachments/"),
            "{attached}"
        );
        assert!(
            attached.contains("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        let headers = format!("{alice}Cookie: APPSESSION={sid}\n");
        let sent = text(&w.answer(
            &request(
                "POST",
                "/mail/api/send",
                &headers,
                br#"{"to":"bob","subject":"hi","body":"see"}"#,
            ),
            now,
        ));
        assert!(sent.contains("\"attachments\":1"), "{sent}");
        let bob = text(&w.answer(
            &request("GET", "/mail/api/inbox", "X-Tether-User: bob\n", b""),
            now,
        ));
        assert!(
            bob.contains("\"subject\":\"hi\"") && bob.contains("notes.txt"),
            "{bob}"
        );
        let nobody = text(&w.answer(
            &request("POST", "/mail/api/send", &headers, br#"{"to":"a b"}"#),
            now,
        ));
        assert!(nobody.starts_with("HTTP/1.1 400"), "{nobody}");
    }

    #[test]
    fn an_upload_forwarded_to_the_other_instance_reaches_the_sessions_draft() {
        let mail = MailSystem::new();
        let publisher = Publisher::start(Vec::new(), String::new()).unwrap();
        let one = Webmail::new(1, mail.clone(), publisher.clone(), Vec::new());
        let two = Webmail::new(2, mail, publisher, Vec::new());
        let now = Instant::now();
        let first = text(&one.answer(
            &request("GET", "/mail/api/inbox", "X-Tether-User: alice\n", b""),
            now,
        ));
        let sid = session_id(&first);
        use base64::Engine;
        let meta = format!(
            "X-Tether-User: alice\nX-Tether-Upload-Metadata: filename {},session {}\n",
            base64::engine::general_purpose::STANDARD.encode("a.txt"),
            base64::engine::general_purpose::STANDARD.encode(&sid)
        );
        let attached = text(&two.answer(&request("POST", "/mail/attach", &meta, b"x"), now));
        assert!(attached.starts_with("HTTP/1.1 201"), "{attached}");
        let headers = format!("X-Tether-User: alice\nCookie: APPSESSION={sid}\n");
        let inbox = text(&one.answer(&request("GET", "/mail/api/inbox", &headers, b""), now));
        assert!(inbox.contains("\"name\":\"a.txt\""), "{inbox}");
    }

    #[test]
    fn mail_without_tethers_identity_is_refused() {
        let w = webmail();
        let a = text(&w.answer(&request("GET", "/mail/api/inbox", "", b""), Instant::now()));
        assert!(a.starts_with("HTTP/1.1 401"), "{a}");
        let page = text(&w.answer(
            &request("GET", "/mail/", "X-Tether-User: bob\n", b""),
            Instant::now(),
        ));
        assert!(page.contains("http://127.0.0.1:8181") && !page.contains("__NODES__"));
    }
}
